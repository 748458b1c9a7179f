"""Every API answer is JSON, errors included: ``{"error": code, "detail": text, ...}``."""

from __future__ import annotations

from typing import Any

from django.http import JsonResponse


def json_error(status: int, code: str, detail: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail, **extra}, status=status)
