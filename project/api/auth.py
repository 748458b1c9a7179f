"""Who may call the agent API: holders of ``FLEET_TOKEN``, compared in constant time."""

from __future__ import annotations

import functools
import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from .errors import json_error


def bearer_token_ok(request: HttpRequest) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not settings.FLEET_TOKEN:
        return False
    return hmac.compare_digest(token.strip().encode(), settings.FLEET_TOKEN.encode())


def agent_api(*methods: str):
    """Allow only ``methods``, and only to callers holding ``FLEET_TOKEN``."""

    def decorate(view):
        @csrf_exempt
        @functools.wraps(view)
        async def guarded(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if request.method not in methods:
                response = json_error(405, "method_not_allowed", f"use {', '.join(methods)}")
                response["Allow"] = ", ".join(methods)
                return response
            if not bearer_token_ok(request):
                response = json_error(401, "unauthorized", "send 'Authorization: Bearer <FLEET_TOKEN>'")
                response["WWW-Authenticate"] = 'Bearer realm="fleet"'
                return response
            return await view(request, *args, **kwargs)

        return guarded

    return decorate
