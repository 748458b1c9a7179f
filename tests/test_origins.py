"""Which handshakes open a socket (project/socket_origin.py): Host and the full Origin, scheme,
host and port, as Django checks a form post. Over the real processes with a real WebSocket
client, and the rules themselves on ASGI scopes."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from django.core.exceptions import ImproperlyConfigured
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from project.socket_origin import parse_allowed_origins, refusal

from .conftest import make_stack
from .stack import Stack, recv_json

PUBLIC_ORIGIN = "https://fleet.example.com"  # what browsers see; the proxy sends Host 127.0.0.1:PORT
PROXIED_HOST = "chat.example.org"  # reached through a front proxy that says X-Forwarded-Proto


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url):
    yield from make_stack(
        tmp_path_factory,
        redis_url,
        ALLOWED_HOSTS=f"127.0.0.1,localhost,{PROXIED_HOST}",
        ALLOWED_ORIGINS=PUBLIC_ORIGIN,
    )


@pytest.fixture(scope="module")
def session(stack: Stack) -> str:
    stack.create_users("olga")
    return stack.login("olga")


async def handshake(
    stack: Stack,
    session: str,
    origin: str | None,
    host: str | None = None,
    headers: dict[str, str] | None = None,
    source_address: str = "127.0.0.1",
) -> int | str:
    """Open a chat socket to the web process with this Host and Origin (none when ``None``):
    the first frame's type when accepted, else the handshake's HTTP status."""
    host = host or f"127.0.0.1:{stack.port}"
    connection = socket.create_connection(("127.0.0.1", stack.port), source_address=(source_address, 0))
    try:
        async with connect(
            f"ws://{host}/ws/chat/origins/",
            sock=connection,
            origin=origin,
            open_timeout=10,
            additional_headers={"Cookie": f"sessionid={session}", **(headers or {})},
        ) as ws:
            return (await recv_json(ws))["type"]
    except InvalidStatus as refused:
        return refused.response.status_code
    finally:
        connection.close()


@pytest.mark.integration
async def test_the_sites_own_origin_opens_a_socket(stack, session):
    assert await handshake(stack, session, stack.base_url) == "chat.history"
    assert (
        await handshake(stack, session, f"http://localhost:{stack.port}", host=f"localhost:{stack.port}")
        == "chat.history"
    )


@pytest.mark.integration
@pytest.mark.parametrize(
    "origin",
    [
        "https://127.0.0.1:{port}",  # wrong scheme
        "https://127.0.0.1",
        "http://127.0.0.1:1",  # wrong port
        "http://127.0.0.1",
        "http://evil.example",  # foreign host
        "http://evil.example:{port}",
        "http://localhost:{port}",  # an allowed host, but not the one this socket was opened at
        "null",
    ],
)
async def test_any_other_origin_is_refused(stack, session, origin):
    assert await handshake(stack, session, origin.format(port=stack.port)) == 403


@pytest.mark.integration
async def test_a_handshake_without_an_origin_is_refused(stack, session):
    assert await handshake(stack, session, None) == 403


@pytest.mark.integration
@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}"])
async def test_a_foreign_host_is_refused_as_django_refuses_it_over_http(stack, session, host):
    host = host.format(port=stack.port)
    assert await handshake(stack, session, stack.base_url, host=host) == 403
    assert await handshake(stack, session, f"http://{host}", host=host) == 403
    request = urllib.request.Request(stack.base_url + "/healthz", headers={"Host": host})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 400
    assert (
        f"refusing a socket to /ws/chat/origins/: Host '{host}' is not one of ALLOWED_HOSTS"
        in stack.read_log("web")
    )


@pytest.mark.integration
async def test_allowed_origins_admits_the_public_origin_of_a_proxy_deployment(stack, session):
    """TLS ends at a proxy that forwards to 127.0.0.1:PORT without saying so: the browser's
    origin is https://fleet.example.com, listed in ALLOWED_ORIGINS, and nothing near it is."""
    assert await handshake(stack, session, PUBLIC_ORIGIN) == "chat.history"
    for origin in ("http://fleet.example.com", "https://fleet.example.com:8443", "https://other.example.com"):
        assert await handshake(stack, session, origin) == 403, origin


@pytest.mark.integration
async def test_behind_a_trusted_proxy_the_forwarded_scheme_is_the_sites(stack, session):
    """uvicorn believes X-Forwarded-Proto from FORWARDED_ALLOW_IPS (127.0.0.1) only."""
    https = {"X-Forwarded-Proto": "https"}
    assert (
        await handshake(stack, session, f"https://{PROXIED_HOST}", host=PROXIED_HOST, headers=https)
        == "chat.history"
    )
    assert await handshake(stack, session, f"http://{PROXIED_HOST}", host=PROXIED_HOST, headers=https) == 403
    assert await handshake(stack, session, f"https://{PROXIED_HOST}", host=PROXIED_HOST) == 403
    # Another local address is not the proxy: its claim to https is not believed.
    claimed = await handshake(
        stack,
        session,
        f"https://{PROXIED_HOST}",
        host=PROXIED_HOST,
        headers=https,
        source_address="127.0.0.2",
    )
    assert claimed == 403


# --- the rules, on ASGI scopes ------------------------------------------------------------


def scope(host: str | None, *origins: str, scheme: str = "ws", **headers: str) -> dict:
    pairs = [(b"host", host.encode())] if host is not None else []
    pairs += [(b"origin", origin.encode()) for origin in origins]
    pairs += [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    return {"type": "websocket", "scheme": scheme, "path": "/ws/status/", "headers": pairs}


NONE_ALLOWED = frozenset()


@pytest.mark.parametrize(
    "host, origin",
    [
        ("localhost", "http://localhost"),
        ("localhost:80", "http://LOCALHOST"),  # default port either way; host names compare without case
        ("[::1]:8000", "http://[::1]:8000"),
        ("127.0.0.1:8000", "http://127.0.0.1:8000"),
    ],
)
def test_the_same_origin_passes(settings, host, origin):
    settings.ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]
    assert refusal(scope(host, origin), NONE_ALLOWED) is None


@pytest.mark.parametrize(
    "handshake, reason",
    [
        (scope("localhost:8000", "http://localhost:8000/"), "Origin 'http://localhost:8000/' is neither"),
        (scope("localhost:8000", "http://user@localhost:8000"), "is neither"),
        (scope("localhost:8000", "ws://localhost:8000"), "is neither"),
        (scope("localhost:8000", "http://localhost:8000", "http://localhost:8000"), "2 Origin headers"),
        (scope(None, "http://localhost:8000"), "0 Host headers"),
        (
            scope("localhost:8000", "http://localhost:8000", scheme="wss"),
            "neither this site's (https://localhost:8000)",
        ),
        (
            scope("localhost:8000:1", "http://localhost:8000"),
            "Host 'localhost:8000:1' is not one of ALLOWED_HOSTS",
        ),
    ],
)
def test_anything_else_is_refused_with_a_reason(settings, handshake, reason):
    settings.ALLOWED_HOSTS = ["localhost"]
    assert reason in refusal(handshake, NONE_ALLOWED)


def test_a_configured_proxy_ssl_header_decides_the_scheme_as_for_http(settings):
    settings.ALLOWED_HOSTS = ["fleet.example.com"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_SSL", "on")
    assert (
        refusal(scope("fleet.example.com", "https://fleet.example.com", x_forwarded_ssl="on"), NONE_ALLOWED)
        is None
    )
    assert refusal(
        scope("fleet.example.com", "https://fleet.example.com", x_forwarded_ssl="off"), NONE_ALLOWED
    )
    assert refusal(scope("fleet.example.com", "http://fleet.example.com"), NONE_ALLOWED) is None


def test_allowed_origins_must_be_origins():
    assert parse_allowed_origins(["https://Fleet.example.com", "http://10.0.0.5:8080"]) == {
        ("https", "fleet.example.com", 443),
        ("http", "10.0.0.5", 8080),
    }
    for bad in (
        "fleet.example.com",
        "https://fleet.example.com/",
        "https://*.example.com",
        "https://a:99999",
    ):
        with pytest.raises(ImproperlyConfigured, match="is not an origin"):
            parse_allowed_origins([bad])
