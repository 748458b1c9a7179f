"""A client that stops reading: bounded server memory, others unaffected, the slow one told.

A real WebSocket client with a 4 KiB receive buffer that stops reading (websockets pauses
the transport once ``max_queue`` frames wait), against the real Procfile processes. The
outgoing queue bound is made small (``SOCKET_QUEUE_MAX_FRAMES``) so it is reached within
seconds; what the server holds for the client before that is the transport's 64 KiB and the
kernel's socket buffers.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request

import psutil
import pytest
from websockets.exceptions import ConnectionClosed

from project import protocol

from .conftest import make_stack
from .scrape import scrape, value
from .stack import Stack, recv_json, recv_until, send_json

TOKEN = "slow-client-test-token"
QUEUE_FRAMES = 4


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url):
    yield from make_stack(
        tmp_path_factory,
        redis_url,
        FLEET_TOKEN=TOKEN,
        SOCKET_QUEUE_MAX_FRAMES=str(QUEUE_FRAMES),
        CHAT_RATE_LIMIT_COUNT="100000",
        CHAT_MESSAGE_MAX_CHARS="2000",
        EDGE_MESSAGES_PER_S="10000",
        EDGE_MESSAGES_BURST="10000",
        # uvicorn drops a client that leaves its ping unanswered for 20 + 20 s; the stalled
        # clients here must outlive that to show the outbox's own bound.
        UVICORN_WS_PING_INTERVAL="300",
    )


@pytest.fixture(scope="module")
def session(stack: Stack) -> str:
    stack.create_users("carol")
    return stack.login("carol")


def small_socket(stack: Stack) -> socket.socket:
    """A connected socket whose receive window is tiny, so that not reading soon backs up the server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", stack.port))
    return sock


class Stalled:
    """A WebSocket client that stops reading its socket once connected, until ``resume()``.

    Its 4 KiB receive buffer fills, TCP pushes back, and the server's socket buffers, then
    its transport, then the socket's outbox fill up behind it. It sends no pings (it is
    stalled); the test stack lets uvicorn wait 300 s for its answer to the server's.
    """

    def __init__(self, stack: Stack, path: str, session: str) -> None:
        self.connecting = stack.connect(path, session, sock=small_socket(stack), ping_interval=None)

    async def __aenter__(self):
        self.ws = await self.connecting.__aenter__()
        self.ws.transport.pause_reading()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.connecting.__aexit__(*exc)

    def resume(self):
        """Read again; returns the connection to read from."""
        self.ws.transport.resume_reading()
        return self.ws


def stalled(stack: Stack, path: str, session: str) -> Stalled:
    return Stalled(stack, path, session)


def web_rss_mib(stack: Stack) -> float:
    """Resident memory of the web server and its worker processes."""
    web = psutil.Process(stack.processes["web"].pid)
    return sum(p.memory_info().rss for p in [web, *web.children(recursive=True)]) / 2**20


class BusyFleet:
    """Machines with many long-named packages, re-reported every second: updates of ~1 MB."""

    def __init__(self, stack: Stack, machines: int = 40, packages: int = 150) -> None:
        self.stack, self.machines, self.packages = stack, machines, packages
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.report_forever, daemon=True)

    def report_forever(self) -> None:
        round_ = 0
        while not self.stopped.is_set():
            round_ += 1
            for machine in range(self.machines):
                software = [
                    {
                        "name": f"package-{n:03d}-" + "x" * 80,
                        "state": "installing",
                        "percent": (round_ + n) % 100,
                    }
                    for n in range(self.packages)
                ]
                body = json.dumps({"state": "provisioning", "software": software}).encode()
                request = urllib.request.Request(
                    f"{self.stack.base_url}/api/machines/busy-{machine:02d}/report",
                    data=body,
                    method="POST",
                    headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
                )
                urllib.request.urlopen(request, timeout=10).close()
            self.stopped.wait(0.5)

    def __enter__(self) -> BusyFleet:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join(30)


def web_log_says(stack: Stack, text: str) -> bool:
    return text in stack.read_log("web")


async def test_stalled_status_client_is_resynced_and_holds_up_no_one(stack, session):
    async with (
        stack.connect("/ws/status/", session) as healthy,
        stalled(stack, "/ws/status/", session) as stalled_client,
    ):
        seq = (await recv_until(healthy, protocol.STATUS_SNAPSHOT))["seq"]

        async def healthy_reads_until(done) -> int:
            """Every update reaches the healthy client, in order; returns the bytes it read."""
            nonlocal seq
            read_bytes = 0
            while not done():
                text = await asyncio.wait_for(healthy.recv(), 10)
                frame = json.loads(text)
                if frame["type"] == protocol.STATUS_UPDATE:
                    assert frame["seq"] == seq + 1, "the healthy client missed an update"
                    seq, read_bytes = frame["seq"], read_bytes + len(text)
            return read_bytes

        with BusyFleet(stack):
            # The kernel's socket buffers take several MB before the server's send waits;
            # then the outbox fills and overflows.
            give_up = time.monotonic() + 90
            await healthy_reads_until(
                lambda: web_log_says(stack, "resyncing a slow status socket") or time.monotonic() > give_up
            )
            assert web_log_says(stack, "resyncing a slow status socket"), "the slow client was never resynced"
            # From here on every update is dropped for the slow client rather than kept.
            rss_before = web_rss_mib(stack)
            window_ends = time.monotonic() + 10
            missed_bytes = await healthy_reads_until(lambda: time.monotonic() > window_ends)
            rss_growth = web_rss_mib(stack) - rss_before
        assert missed_bytes > 5 * 2**20
        assert rss_growth < missed_bytes / 2**20 / 2, f"web RSS grew {rss_growth:.1f} MiB"

        # The slow client reads again: somewhere in its stream the server said it dropped
        # frames, then sent a snapshot, and from there the updates are consecutive again.
        slow = stalled_client.resume()
        notice = await recv_until(slow, protocol.STATUS_RESYNC, timeout_s=60)
        assert notice["reason"] == protocol.SLOW_CLIENT and notice["dropped"] > 0
        counted = scrape(f"{stack.base_url}/metrics")
        assert value(counted, "fleetchat_slow_client_resyncs_total") >= 1
        assert value(counted, "fleetchat_frames_dropped_total", kind="status") >= notice["dropped"]
        resynced = await recv_until(slow, protocol.STATUS_SNAPSHOT, timeout_s=10)
        after = await recv_until(slow, protocol.STATUS_UPDATE, timeout_s=10)
        while after["seq"] <= resynced["seq"]:
            after = await recv_until(slow, protocol.STATUS_UPDATE, timeout_s=10)
        assert after["epoch"] == resynced["epoch"] and after["seq"] == resynced["seq"] + 1


async def test_stalled_chat_member_is_closed_with_4008_and_resumes_without_loss(stack, session):
    room = "/ws/chat/slow/"
    filler = "y" * 1990
    async with stack.connect(room, session) as sender, stalled(stack, room, session) as stalled_client:
        await recv_until(sender, protocol.CHAT_HISTORY)
        sent_ids: list[int] = []
        while not web_log_says(stack, "closing a slow ChatConsumer"):
            assert len(sent_ids) < 50_000, "the slow member was never closed"
            for n in range(50):
                await send_json(sender, {"type": "chat.message", "message": f"{len(sent_ids) + n} {filler}"})
            for _ in range(50):
                sent_ids.append((await recv_until(sender, protocol.CHAT_MESSAGE))["id"])

        # The slow member reads again: what reached it, then the close, with the documented code.
        slow = stalled_client.resume()
        seen: set[int] = set()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frame = await recv_json(slow, 30)
                if frame["type"] == protocol.CHAT_POSITION:
                    continue
                for message in frame["messages"] if frame["type"] == protocol.CHAT_HISTORY else [frame]:
                    seen.add(message["id"])
        assert closed.value.rcvd is not None, "the server did not send a close frame"
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
            protocol.CLOSE_SLOW_CLIENT,
            protocol.SLOW_CLIENT,
        )
        assert set(sent_ids) - seen, "the slow member missed nothing, so nothing was bounded"
        assert (
            value(scrape(f"{stack.base_url}/metrics"), "fleetchat_slow_client_closes_total", kind="chat") >= 1
        )

    # Reconnect and resume from the highest id seen: every message exactly once.
    async with stack.connect(room, session) as again:
        await recv_until(again, protocol.CHAT_HISTORY)
        after_id = max(seen)
        while True:
            await send_json(again, {"type": "chat.resume", "after_id": after_id})
            page = await recv_until(again, protocol.CHAT_HISTORY)
            ids = [message["id"] for message in page["messages"]]
            assert not seen.intersection(ids), "a resumed message was delivered twice"
            seen.update(ids)
            if not page["truncated"]:
                break
            after_id = ids[-1]
    assert set(sent_ids) <= seen
