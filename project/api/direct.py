"""The agents' API served straight from the event loop, beside Django's HTTP handler.

Django's handler runs every request's middleware in a thread made for that request (each
synchronous middleware hop is a ``sync_to_async`` round trip) before an async view runs. For
the report endpoints that was most of a request's cost: about 5.8 ms of CPU per report, 286
reports a second from both web processes (docs/performance.md, "Stop 18"). The agent API needs
none of what that chain gives (sessions, CSRF, users, messages, login throttling): its views
authenticate by token (``auth.agent_api``) and are async through and through.

:class:`DirectAgentApi` hands a request whose path resolves to such a view (one marked by
:func:`served_direct`) to that view in the event loop, and everything else to Django. What
the middleware chain did that the agents' answers still need is done here, in the same order:

- the ``Host`` header is checked against ``ALLOWED_HOSTS`` (``400 bad_request``);
- the header middleware (:data:`HEADER_MIDDLEWARE`: HTTPS redirect, HSTS, ``nosniff``, the
  Content-Security-Policy, ``X-Frame-Options``) runs as it does in Django; none of it does I/O,
  so it runs in the loop rather than in a thread;
- a body is read up to the largest the API takes (a larger one is cut there, which the views
  answer ``413 too_large``, so a huge upload is never held in memory);
- an exception is logged and answered ``500 internal_error``, never a traceback.

The views are the same functions in either path: a test client going through Django and an
agent going through here get the same answers (tests/test_report_api.py, test_direct_api.py).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

from csp.middleware import CSPMiddleware
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.urls import Resolver404, resolve

from .. import protocol
from .errors import json_error

log = logging.getLogger(__name__)
security_log = logging.getLogger("django.security.DisallowedHost")

PREFIX = "/api/"
ATTRIBUTE = "served_direct"
# The largest body any direct view takes; one larger is read no further than one byte past it.
BODY_LIMIT = max(protocol.MAX_REPORT_BATCH_BYTES, protocol.MAX_REPORT_BYTES)


def served_direct(view):
    """Marks an async view as one :class:`DirectAgentApi` serves from the event loop. It must
    authenticate on its own and need nothing from Django's middleware but what the module says."""
    setattr(view, ATTRIBUTE, True)
    return view


def never_called(request):  # the header middleware's get_response, which they only store
    raise AssertionError("header middleware is run by hand here")


# As ordered in settings.MIDDLEWARE (a test holds this list to it): requests in this order,
# responses in reverse.
HEADER_MIDDLEWARE = (SecurityMiddleware, CSPMiddleware, XFrameOptionsMiddleware)


class DirectAgentApi:
    """ASGI: the agent API's requests to their views, the rest to ``django_app``."""

    def __init__(self, django_app) -> None:
        self.django_app = django_app
        middleware = [kind(never_called) for kind in HEADER_MIDDLEWARE]
        self.request_steps: list[Callable[[HttpRequest], HttpResponseBase | None]] = [
            each.process_request for each in middleware if hasattr(each, "process_request")
        ]
        self.response_steps: list[Callable[[HttpRequest, Any], HttpResponseBase]] = [
            each.process_response for each in reversed(middleware) if hasattr(each, "process_response")
        ]

    async def __call__(self, scope, receive, send) -> None:
        match = self.direct_match(scope)
        if match is None:
            await self.django_app(scope, receive, send)
            return
        body = await read_body(receive, BODY_LIMIT + 1)
        if body is None:
            return  # the client went away
        request = ASGIRequest(scope, io.BytesIO(body))
        request.resolver_match = match
        response = await self.answer(request, match)
        await send_response(response, send)

    @staticmethod
    def direct_match(scope):
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            return None
        try:
            match = resolve(scope["path"])
        except Resolver404:
            return None
        return match if getattr(match.func, ATTRIBUTE, False) else None

    async def answer(self, request: ASGIRequest, match) -> HttpResponse:
        try:
            response = self.refusal(request)
            if response is None:
                response = await match.func(request, *match.args, **match.kwargs)
            for finish in self.response_steps:
                response = finish(request, response)
            if not isinstance(response, HttpResponse):
                raise TypeError(f"the agent API answers whole responses, not {type(response).__name__}")
            return response
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return json_error(500, "internal_error", "the server could not answer this request")

    def refusal(self, request: ASGIRequest) -> HttpResponseBase | None:
        """What answers ``request`` before its view does: a bad ``Host`` or an HTTPS redirect."""
        try:
            request.get_host()  # what Django's CommonMiddleware checks first
        except DisallowedHost as error:
            security_log.error("%s", error, extra={"status_code": 400, "request": request})
            return json_error(400, "bad_request", "the request could not be read")
        for step in self.request_steps:
            response = step(request)
            if response is not None:
                return response
        return None


async def read_body(receive, limit: int) -> bytes | None:
    """The request's body, cut at ``limit`` bytes; ``None`` if the client disconnected."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        if size < limit:
            chunks.append(chunk[: limit - size])
            size += len(chunks[-1])
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_response(response: HttpResponse, send) -> None:
    """``response`` in two ASGI messages, with its ``Content-Length`` as Django's CommonMiddleware
    gives it (without one the server would answer chunked)."""
    if not response.has_header("Content-Length"):
        response["Content-Length"] = str(len(response.content))
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.items()]
    headers += [
        (b"Set-Cookie", cookie.output(header="").strip().encode("latin-1"))
        for cookie in response.cookies.values()
    ]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.content})
