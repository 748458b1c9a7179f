"""Where Prometheus reads the metrics (``project/metrics.py``): a port of its own for each worker
and scheduler process (``METRICS_PORT``), and the rule that web's ``/metrics``
(``project/api/metrics.py``) applies too.

Not public: every one of these answers only a client whose address is in ``METRICS_ALLOW_IPS``
(loopback by default) and, when ``METRICS_TOKEN`` is set, that sends it as a bearer token
(compared in constant time). Anyone else gets ``403`` or ``401``. On web the address is
``REMOTE_ADDR``: through the front proxy the client's own (``X-Forwarded-For``, believed from
``FORWARDED_ALLOW_IPS`` only), so a scrape relayed by the front from outside is refused.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

import orjson
from django.conf import settings

# isort: off
from . import metrics  # noqa: F401  first: it chooses prometheus_client's mode before it loads
from prometheus_client import REGISTRY
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
# isort: on

log = logging.getLogger(__name__)


def address_allowed(address: str) -> bool:
    try:
        client = ipaddress.ip_address(address)
    except ValueError:  # no address (a Unix socket) or not one: not known to be allowed
        return False
    if client.version == 6 and client.ipv4_mapped is not None:
        client = client.ipv4_mapped
    return any(client in network for network in settings.METRICS_ALLOW_IPS)


def bearer_matches(authorization: str, token: str) -> bool:
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def refusal(address: str, authorization: str) -> tuple[int, str, str] | None:
    """``None`` if this client may read the metrics, else ``(status, error code, detail)``."""
    if not address_allowed(address):
        return 403, "forbidden", "metrics are not served to this address (METRICS_ALLOW_IPS)"
    if settings.METRICS_TOKEN and not bearer_matches(authorization, settings.METRICS_TOKEN):
        return 401, "unauthorized", "send 'Authorization: Bearer <METRICS_TOKEN>'"
    return None


def challenge(status: int) -> dict[str, str]:
    return {"WWW-Authenticate": 'Bearer realm="metrics"'} if status == 401 else {}


# --- worker and scheduler: a port per process --------------------------------------------------


def guarded(app):
    """``app`` (prometheus_client's WSGI app), behind the same rule as web's ``/metrics``."""

    def answer(environ, start_response):
        refused = refusal(environ.get("REMOTE_ADDR", ""), environ.get("HTTP_AUTHORIZATION", ""))
        if refused is None:
            return app(environ, start_response)
        status, code, detail = refused
        reason = "Forbidden" if status == 403 else "Unauthorized"
        headers = [("Content-Type", "application/json"), *challenge(status).items()]
        start_response(f"{status} {reason}", headers)
        return [orjson.dumps({"error": code, "detail": detail})]

    return answer


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:
        """Scrapes are not logged (web has no access log either)."""


def serve_port(process: str, *collectors) -> None:
    """Serve this process's metrics on ``METRICS_BIND:METRICS_PORT`` from a daemon thread
    (nothing if ``METRICS_PORT`` is 0). A port already taken is logged and the process runs on
    without metrics: Prometheus shows the target down."""
    for collector in collectors:
        REGISTRY.register(collector)
    if not settings.METRICS_PORT:
        return

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in settings.METRICS_BIND else socket.AF_INET

    try:
        server = make_server(
            settings.METRICS_BIND,
            settings.METRICS_PORT,
            guarded(make_wsgi_app(REGISTRY)),
            Server,
            handler_class=QuietHandler,
        )
    except OSError as error:
        log.error(
            "%s: cannot serve metrics on %s:%s (%s)",
            process,
            settings.METRICS_BIND,
            settings.METRICS_PORT,
            error,
        )
        return
    log.info("%s: metrics on http://%s:%d/metrics", process, settings.METRICS_BIND, settings.METRICS_PORT)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
