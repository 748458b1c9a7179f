"""The edge: nginx in front of the web process (deploy/nginx/fleetchat.conf.template).

uvicorn alone keeps an idle or half-sent connection open for as long as the client likes,
answers a 1 MiB header line, and never answers a WebSocket handshake past websockets' header
limits. Each of those probes goes over a raw socket to the front and, at the same time, to the
web process directly, where it shows the problem: the reason for the front stays in the code.
Then the per-address limit, and the service itself used through the front: login, both
sockets, a report, readiness.

Without nginx these tests skip, except under CI=true, where a missing nginx fails.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from .conftest import make_stack
from .front import NGINX, Front
from .stack import Stack, recv_json, recv_until, send_json

pytestmark = pytest.mark.integration

TOKEN = "edge-test-token-5d4c3b"
CONN_PER_ADDRESS = 8
# The front's client_header_timeout is 5 s; "within a few seconds" leaves 2 s for a busy machine.
CLOSED_WITHIN_S = 7
# How long a probe of the web process alone waits to show that nothing happens.
UNANSWERED_FOR_S = 3


@pytest.fixture(scope="module")
def nginx() -> str:
    if not Path(NGINX).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but no nginx at {NGINX}; .ci/run installs Debian's nginx")
        pytest.skip(f"no nginx at {NGINX} (apt-get install nginx)")
    return NGINX


@pytest.fixture(scope="module")
def stack(nginx, tmp_path_factory, redis_url) -> Iterator[Stack]:
    yield from make_stack(tmp_path_factory, redis_url, FLEET_TOKEN=TOKEN)


@pytest.fixture(scope="module")
def front(stack: Stack, tmp_path_factory) -> Iterator[Front]:
    front = Front(
        tmp_path_factory.mktemp("front"), f"127.0.0.1:{stack.port}", conn_per_address=CONN_PER_ADDRESS
    )
    front.start()
    yield front
    front.stop()


@pytest.fixture(scope="module")
def via_front(stack: Stack, front: Front) -> Stack:
    """The same processes, reached the way clients reach them: through the front."""
    through = copy.copy(stack)
    through.base_url, through.ws_url = front.base_url, front.ws_url
    return through


@pytest.fixture(scope="module")
def session(via_front: Stack) -> str:
    """A session made by logging in through the front (the real login form, CSRF and all)."""
    via_front.create_users("edge")
    return via_front.login("edge")


# --- raw probes --------------------------------------------------------------------------------


@dataclass
class Seen:
    status: int | None  # the answer's status code; None if no answer came
    closed_after_s: float | None  # when the server closed the connection; None if it never did


async def probe(
    port: int, request: bytes = b"", wait_s: float = CLOSED_WITHIN_S + 1, trickle: bool = False
) -> Seen:
    """Send ``request`` and watch the connection for ``wait_s``. ``trickle`` adds a header byte
    every second, as a slow client keeps a half-sent request alive."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start, received = loop.time(), b""
    try:
        writer.write(request)
        while (left_s := start + wait_s - loop.time()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), min(left_s, 1))
            except TimeoutError:
                if trickle:
                    writer.write(b"x")
                continue
            if not chunk:
                return Seen(status_of(received), loop.time() - start)
            received += chunk
        return Seen(status_of(received), None)
    except ConnectionError:  # a reset, or a write after the server hung up
        return Seen(status_of(received), loop.time() - start)
    finally:
        writer.close()


def status_of(answer: bytes) -> int | None:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


def handshake(path: str, *headers: str) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


HALF_SENT = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


async def test_idle_and_half_sent_connections_are_closed_by_the_front_not_by_uvicorn(stack, front):
    idle, half_sent, idle_at_web, half_sent_at_web = await asyncio.gather(
        probe(front.port),
        probe(front.port, HALF_SENT, trickle=True),
        probe(stack.port),
        probe(stack.port, HALF_SENT, trickle=True),
    )
    assert idle.closed_after_s is not None and idle.closed_after_s < CLOSED_WITHIN_S
    assert half_sent.closed_after_s is not None and half_sent.closed_after_s < CLOSED_WITHIN_S
    # uvicorn starts no timer before its first response: both would stay open for good.
    assert idle_at_web.closed_after_s is None
    assert half_sent_at_web.closed_after_s is None


async def test_a_handshake_with_a_9_kb_cookie_is_answered_400_and_closed(stack, front):
    request = handshake("/ws/status/", "Cookie: big=" + "x" * 9000)
    at_front, at_web = await asyncio.gather(
        probe(front.port, request), probe(stack.port, request, wait_s=UNANSWERED_FOR_S)
    )
    assert at_front.status == 400
    assert at_front.closed_after_s is not None and at_front.closed_after_s < 1
    # websockets composes a 431 that uvicorn never sends; the client waits for good.
    assert at_web == Seen(status=None, closed_after_s=None)


async def test_130_headers_on_a_handshake_reach_uvicorn_as_a_handful(stack, front, session):
    request = handshake(
        # The Origin of a page at the Host this handshake names (127.0.0.1, port 80): the port counts.
        "/ws/status/",
        "Origin: http://127.0.0.1",
        f"Cookie: sessionid={session}",
        *(f"X-Filler-{n}: {n}" for n in range(130)),
    )
    at_front, at_web = await asyncio.gather(
        probe(front.port, request, wait_s=UNANSWERED_FOR_S),
        probe(stack.port, request, wait_s=UNANSWERED_FOR_S),
    )
    # The front forwards a handshake's own headers only, under websockets' limit of 128.
    assert at_front.status == 101
    assert at_web == Seen(status=None, closed_after_s=None)


async def test_a_1_mib_header_line_is_refused(stack, front):
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"x" * 2**20 + b"\r\n\r\n"
    at_front, at_web = await asyncio.gather(probe(front.port, request), probe(stack.port, request, wait_s=1))
    assert at_front.status == 400
    assert at_front.closed_after_s is not None and at_front.closed_after_s < 1
    assert at_web.status == 200


async def test_sockets_per_client_address_are_bounded(via_front, session):
    sockets = [await via_front.connect("/ws/status/", session) for _ in range(CONN_PER_ADDRESS)]
    try:
        for ws in sockets:
            await recv_until(ws, "status.snapshot")  # an update may overtake it (consumers/status.py)
        with pytest.raises(InvalidStatus) as refused:
            await via_front.connect("/ws/status/", session)
        assert refused.value.response.status_code == 429
        # The ones within the limit carry on, and a closed one frees its place.
        for ws in sockets:
            await recv_until(ws, "status.update")
        await sockets.pop().close()
        sockets.append(await via_front.connect("/ws/status/", session))
        await recv_until(sockets[-1], "status.snapshot")
    finally:
        for ws in sockets:
            await ws.close()


# --- the service through the front ------------------------------------------------------------


def http(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


async def test_readiness_and_a_report_through_the_front_then_the_status_socket_shows_it(via_front, session):
    assert http(via_front.base_url + "/readyz") == 200
    async with via_front.connect("/ws/status/", session) as ws:
        await recv_until(ws, "status.snapshot")
        name = f"edge-{uuid.uuid4().hex[:8]}"
        status = http(
            f"{via_front.base_url}/api/machines/{name}/report",
            json.dumps({"state": "provisioning", "progress": 40}).encode(),
            {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        assert status == 202
        for _ in range(3):
            update = await recv_until(ws, "status.update")
            if any(machine["name"] == name for machine in update["machines"]):
                break
        else:
            raise AssertionError(f"{name} never appeared in an update")


def test_a_batch_of_reports_passes_the_front_up_to_the_apis_own_bound(via_front, session):
    """1.5 MiB is far past the 72 KiB every other path may send, and within the batch API's 2 MiB."""
    software = [{"name": f"pkg-{n:03d}-" + "x" * 80, "state": "queued", "percent": 0} for n in range(100)]
    items = [
        {"name": f"edge-batch-{n:03d}", "report": {"state": "pending", "software": software}}
        for n in range(150)
    ]
    body = json.dumps(items).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    assert 1024 * 1024 < len(body) < 2 * 1024 * 1024

    assert http(f"{via_front.base_url}/api/reports", body, headers) == 202
    assert http(f"{via_front.base_url}/api/machines/edge-batch-000/report", body, headers) == 413


async def test_a_chat_socket_through_the_front(via_front, session):
    room = f"edge-{uuid.uuid4().hex[:8]}"
    async with via_front.connect(f"/ws/chat/{room}/", session) as ws:
        assert (await recv_json(ws))["type"] == "chat.history"
        await send_json(ws, {"type": "chat.message", "message": "through the front", "client_id": "e1"})
        echoed = await recv_until(ws, "chat.message")
    assert (echoed["user"], echoed["message"], echoed["client_id"]) == ("edge", "through the front", "e1")
