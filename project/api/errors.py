"""Every API answer is JSON, errors included: ``{"error": code, "detail": text, ...}``.

The views answer their own errors; :func:`json_answers` catches what Django answers for them
before a view runs (an unknown ``/api/`` path, a body Django refuses to read) and says it in
JSON too.
"""

from __future__ import annotations

import functools
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

# Paths whose every answer is JSON (docs/protocol.md, "HTTP API"; /api/openapi.json lists them).
JSON_PATHS = ("/api/", "/healthz", "/readyz")
CODES = {
    400: ("bad_request", "the request could not be read"),
    403: ("forbidden", "not allowed"),
    404: ("not_found", "no such API path (see /api/openapi.json)"),
    405: ("method_not_allowed", "this method is not allowed here"),
    413: ("too_large", "the request body is too large"),
    500: ("internal_error", "the server could not answer this request"),
}


def json_error(status: int, code: str, detail: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail, **extra}, status=status)


def methods(*allowed: str):
    """Only ``allowed`` methods (405 JSON otherwise). Read-only probes and reads authenticated by
    session or token: no CSRF check, which would answer a stray POST with an HTML 403."""

    def decorate(view):
        @csrf_exempt
        @functools.wraps(view)
        async def guarded(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if request.method not in allowed:
                response = json_error(405, "method_not_allowed", f"use {', '.join(allowed)}")
                response["Allow"] = ", ".join(allowed)
                return response
            answer = view(request, *args, **kwargs)
            return await answer if iscoroutinefunction(view) else answer

        return guarded

    return decorate


def body_within(request: HttpRequest, limit: int) -> bytes | None:
    """The request's body, or ``None`` if it is larger than ``limit`` bytes: declared so, sent so
    (a chunked body declares nothing), or refused by Django itself (``DATA_UPLOAD_MAX_MEMORY_SIZE``)."""
    declared = request.headers.get("Content-Length", "0")
    if declared.isdigit() and int(declared) > limit:
        return None
    try:
        body = request.body
    except RequestDataTooBig:
        return None
    return body if len(body) <= limit else None


def json_answers(get_response):
    """Middleware: an error Django answered in HTML under :data:`JSON_PATHS` is said in JSON."""

    async def middleware(request: HttpRequest) -> HttpResponse:
        response = await get_response(request)
        if (
            response.status_code >= 400
            and request.path.startswith(JSON_PATHS)
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            code, detail = CODES.get(response.status_code, ("error", "the request failed"))
            answer = json_error(response.status_code, code, detail)
            if response.has_header("Allow"):
                answer["Allow"] = response["Allow"]
            return answer
        return response

    markcoroutinefunction(middleware)
    return middleware


json_answers.async_capable = True  # type: ignore[attr-defined]
json_answers.sync_capable = False  # type: ignore[attr-defined]
