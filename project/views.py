"""Probes served by the web process."""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The web process is alive and serving; says nothing about its dependencies (see readyz)."""
    return JsonResponse({"status": "ok"})
