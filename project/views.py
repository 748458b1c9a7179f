"""Probes served by the web process."""

from django.http import HttpRequest, JsonResponse

from .api.errors import methods


@methods("GET")
def healthz(request: HttpRequest) -> JsonResponse:
    """The web process is alive and serving; says nothing about its dependencies (see readyz)."""
    return JsonResponse({"status": "ok"})
