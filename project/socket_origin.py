"""Which handshakes may open a socket: their Host and Origin, checked as Django checks a POST.

Django answers a request whose ``Host`` is not one of ``ALLOWED_HOSTS`` with 400, and its CSRF
check compares a form's ``Origin`` with the request's own scheme, host and port, or with
``CSRF_TRUSTED_ORIGINS``. A WebSocket handshake gets neither from Django, and Channels'
``AllowedHostsOriginValidator`` compares the Origin's host alone. Here a handshake is refused
(HTTP 403, before accept) unless

- its ``Host`` is one of ``ALLOWED_HOSTS``, and
- its ``Origin`` is the site's own as the client reached it: ``https`` when the socket came in
  as ``wss`` (TLS at a trusted front proxy counts: uvicorn reads its ``X-Forwarded-Proto``) or
  ``SECURE_PROXY_SSL_HEADER`` says so, ``http`` otherwise, with the host and port of the ``Host``
  header; or it is one of ``ALLOWED_ORIGINS``, for a proxy that changes the Host or ends TLS
  without saying so.

A handshake without exactly one Origin is refused: browsers always send one, and the check is
what keeps other sites' pages from opening sockets with their visitors' session cookies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http.request import split_domain_port, validate_host

from . import metrics

log = logging.getLogger(__name__)

Origin = tuple[str, str, int]
"""``(scheme, host, port)``: lower case, no IPv6 brackets, the scheme's default port filled in."""

DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(value: str) -> Origin | None:
    """``scheme://host[:port]`` as an :data:`Origin`; ``None`` for anything else ("null", a path,
    user info, a wildcard, a port out of range, a scheme other than http and https)."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    domain, _ = split_domain_port(parts.netloc)  # "" for user info, wildcards, bad characters
    if parts.scheme not in DEFAULT_PORTS or not domain:
        return None
    if parts.path or parts.query or parts.fragment or value.endswith(("?", "#")):
        return None
    return parts.scheme, domain.strip("[]"), DEFAULT_PORTS[parts.scheme] if port is None else port


def parse_allowed_origins(values: Iterable[str]) -> frozenset[Origin]:
    """The ``ALLOWED_ORIGINS`` setting, or a clear error for an entry that is not an origin."""
    origins = set()
    for value in values:
        origin = parse_origin(value)
        if origin is None:
            raise ImproperlyConfigured(
                f"ALLOWED_ORIGINS: {value!r} is not an origin (write scheme://host[:port], e.g. https://fleet.example.com)"
            )
        origins.add(origin)
    return frozenset(origins)


def site_origin(scope: dict[str, Any], host: str) -> Origin | None:
    """The origin the client reached this site at: the socket's scheme and the ``Host`` header,
    or ``None`` when that Host is not one of ``ALLOWED_HOSTS`` (where Django answers 400)."""
    domain, port = split_domain_port(host)
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:  # as django.http.HttpRequest.get_host does
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]
    if not domain or not validate_host(domain, allowed_hosts):
        return None
    scheme = "https" if is_secure(scope) else "http"
    return scheme, domain.strip("[]"), int(port) if port else DEFAULT_PORTS[scheme]


def is_secure(scope: dict[str, Any]) -> bool:
    """Whether the client reached the site over TLS, as ``HttpRequest.is_secure`` decides it:
    ``SECURE_PROXY_SSL_HEADER`` when set and sent, else the socket's scheme (``wss``)."""
    if settings.SECURE_PROXY_SSL_HEADER:
        meta_name, secure_value = settings.SECURE_PROXY_SSL_HEADER
        name = meta_name.removeprefix("HTTP_").replace("_", "-").lower().encode()
        values = header_values(scope, name)
        if values:
            return values[0].split(",", 1)[0].strip() == secure_value
    return scope.get("scheme") == "wss"


def header_values(scope: dict[str, Any], name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in scope.get("headers", ()) if key == name]


def refusal(scope: dict[str, Any], allowed_origins: frozenset[Origin]) -> str | None:
    """Why a handshake may not open a socket, or ``None`` when it may."""
    hosts, origins = header_values(scope, b"host"), header_values(scope, b"origin")
    if len(hosts) != 1:
        return f"{len(hosts)} Host headers"
    own = site_origin(scope, hosts[0])
    if own is None:
        return f"Host {hosts[0]!r} is not one of ALLOWED_HOSTS"
    if len(origins) != 1:
        return f"{len(origins)} Origin headers"
    origin = parse_origin(origins[0])
    if origin != own and origin not in allowed_origins:
        scheme, host, port = own
        return f"Origin {origins[0]!r} is neither this site's ({scheme}://{host}:{port}) nor one of ALLOWED_ORIGINS"
    return None


class AllowedOriginMiddleware:
    """Refuses, before accept, a handshake whose Host or Origin is not this site's."""

    def __init__(self, application) -> None:
        self.application = application
        self.allowed_origins = parse_allowed_origins(settings.ALLOWED_ORIGINS)

    async def __call__(self, scope, receive, send):
        reason = refusal(scope, self.allowed_origins)
        if reason is None:
            return await self.application(scope, receive, send)
        log.warning("refusing a socket to %s: %s", scope.get("path"), reason)
        metrics.handshake("none", metrics.BAD_ORIGIN)
        await receive()  # websocket.connect
        # A close before accept: the server answers the handshake with 403 (the ASGI spec).
        await send({"type": "websocket.close", "code": 1000})
