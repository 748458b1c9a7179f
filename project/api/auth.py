"""Who may call the agent API: holders of a valid agent token (``tokens.py``), each by its name."""

from __future__ import annotations

import functools
import logging

from django.http import HttpRequest, HttpResponse

from . import tokens
from .direct import served_direct
from .errors import json_error, methods

log = logging.getLogger(__name__)


def refusal(request: HttpRequest, verdict: tokens.Verdict) -> HttpResponse:
    """The answer to a request without a valid token. An unknown and a revoked token get the
    same answer: only the log says which (and the name of a revoked one)."""
    log.warning("refused %s %s: %s", request.method, request.path, verdict)
    if verdict.outcome == tokens.UNCHECKED:
        return json_error(503, "server_busy", "agent tokens cannot be checked right now; retry shortly")
    if verdict.outcome == tokens.MISSING:
        response = json_error(401, "unauthorized", "send 'Authorization: Bearer <token>'")
    else:
        response = json_error(401, "unauthorized", "the token is not valid (unknown or revoked)")
    response["WWW-Authenticate"] = 'Bearer realm="fleet"'
    return response


def agent_api(*allowed: str):
    """Allow only ``allowed`` methods, and only to callers holding a valid agent token. Served
    from the event loop, without Django's middleware chain (``direct.py``)."""

    def decorate(view):
        @served_direct
        @methods(*allowed)
        @functools.wraps(view)
        async def guarded(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            verdict = await tokens.authenticate(request)
            if not verdict.accepted:
                return refusal(request, verdict)
            response = await view(request, *args, **kwargs)
            log.debug("%s %s with %s: %d", request.method, request.path, verdict, response.status_code)
            return response

        return guarded

    return decorate
