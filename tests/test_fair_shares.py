"""Fair shares: no user, however busy, can slow everyone else's chat (consumers/limits.py).

Real Procfile processes against a private Redis. Per socket, history pages, resumes and
resyncs are limited at the edge; per user, the sockets held open and the handshakes per second.
The last test floods as one user and measures another room's message latency.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
import uuid

import pytest
from websockets.exceptions import ConnectionClosed

from project import protocol

from .conftest import make_stack
from .stack import Stack, recv_json, recv_until, send_json

pytestmark = pytest.mark.integration
log = logging.getLogger("faults")

SOCKETS_MAX = 4
JOINS_PER_S = 6
# Far above the ~5-50 ms a message takes on this machine when nobody floods, far below the
# seconds it took when one user's flood queued ahead of it (issue 13). The figure itself is
# logged and reported in docs/performance.md.
FLOODED_P99_MAX_S = 1.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url):
    yield from make_stack(
        tmp_path_factory,
        redis_url,
        SOCKETS_PER_USER_MAX=str(SOCKETS_MAX),
        JOINS_PER_USER_PER_S=str(JOINS_PER_S),
        CHAT_RATE_LIMIT_COUNT="1000",  # the talkers below stay within the edge's 5 messages a second
    )


@pytest.fixture(scope="module")
def sessions(stack: Stack) -> dict[str, str]:
    names = ("mallory", "alice", "bob", "carol", "dave")
    stack.create_users(*names)
    return {name: stack.login(name) for name in names}


def room() -> str:
    return f"fair-{uuid.uuid4().hex[:8]}"


async def closed_with(ws) -> tuple[int, str] | None:
    """The close code and reason if the server closes ``ws`` instead of sending history."""
    try:
        await recv_until(ws, protocol.CHAT_HISTORY)
        return None
    except ConnectionClosed as closed:
        return closed.rcvd.code, closed.rcvd.reason


async def test_history_requests_beyond_the_sockets_budget_are_refused_at_the_edge(stack, sessions):
    async with stack.connect(f"/ws/chat/{room()}/", sessions["alice"]) as ws:
        await recv_until(ws, protocol.CHAT_HISTORY)
        for _ in range(12):
            await send_json(ws, {"type": "chat.history", "before_id": 10**9})
        answers = [await recv_json(ws) for _ in range(12)]
    pages = [a for a in answers if a["type"] == protocol.CHAT_HISTORY]
    refused = [a for a in answers if a["type"] == "error"]
    assert 5 <= len(pages) <= 7  # the burst of 5, and what refilled meanwhile
    assert refused and all(a["code"] == "rate_limited" and a["retry_after"] > 0 for a in refused)


async def test_a_user_holds_at_most_their_share_of_sockets(stack, sessions):
    place = room()
    held = []
    for _ in range(SOCKETS_MAX):
        ws = await stack.connect(f"/ws/chat/{place}/", sessions["bob"])
        assert await closed_with(ws) is None
        held.append(ws)
        await asyncio.sleep(1 / JOINS_PER_S)
    try:
        async with stack.connect(f"/ws/chat/{place}/", sessions["bob"]) as extra:
            assert await closed_with(extra) == (protocol.CLOSE_TOO_MANY, protocol.TOO_MANY_SOCKETS)
        async with stack.connect(f"/ws/chat/{place}/", sessions["carol"]) as someone_else:
            assert await closed_with(someone_else) is None
        await held.pop().close()
        await asyncio.sleep(0.5)
        async with stack.connect(f"/ws/chat/{place}/", sessions["bob"]) as again:
            assert await closed_with(again) is None  # a closed socket gives its place back
    finally:
        for ws in held:
            await ws.close()


async def test_a_user_opening_sockets_too_fast_is_slowed_down(stack, sessions):
    place = room()
    verdicts = []
    started = time.monotonic()
    for _ in range(3 * JOINS_PER_S):
        async with stack.connect(f"/ws/chat/{place}/", sessions["carol"]) as ws:
            verdicts.append(await closed_with(ws))
    seconds_touched = int(time.monotonic() - started) + 2  # the windows are wall-clock seconds
    refused = [v for v in verdicts if v is not None]
    assert refused and set(refused) == {(protocol.CLOSE_TOO_MANY, protocol.TOO_MANY_JOINS)}
    assert 0 < len(verdicts) - len(refused) <= JOINS_PER_S * seconds_touched


async def test_one_users_flood_does_not_slow_another_rooms_messages(stack, sessions):
    """mallory floods history pages (85 KB each) from every socket she may hold and opens and
    closes sockets as fast as she can; alice and bob talk in another room meanwhile."""
    flooded = room()
    stack.manage(
        "shell",
        "-c",
        "from workers.chat import next_offset; from workers.models import Message; "
        "from django.db import transaction\n"
        f"with transaction.atomic():\n"
        f"    for n in range(50): Message.objects.create(room={flooded!r}, offset=next_offset({flooded!r}), "
        "author='seed', body='x' * 1700)",
    )
    stop = asyncio.Event()
    refusals = {"rate_limited": 0, "closed": 0}

    async def flood_history(ws) -> None:
        """As fast as the socket takes them, without waiting for answers (issue 13: 2,000 at once)."""
        request = json.dumps({"type": "chat.history", "before_id": 10**9, "limit": 100})
        while not stop.is_set():
            for _ in range(50):
                await ws.send(request)
            await asyncio.sleep(0.05)

    async def count_refusals(ws) -> None:
        async for raw in ws:
            refusals["rate_limited"] += '"rate_limited"' in raw

    async def storm_joins() -> None:
        while not stop.is_set():
            async with stack.connect(f"/ws/chat/{room()}/", sessions["mallory"]) as ws:
                refusals["closed"] += await closed_with(ws) is not None

    sockets = [
        await stack.connect(f"/ws/chat/{flooded}/", sessions["mallory"]) for _ in range(SOCKETS_MAX - 1)
    ]
    for ws in sockets:
        await recv_until(ws, protocol.CHAT_HISTORY)
    attack = [asyncio.create_task(job(ws)) for ws in sockets for job in (flood_history, count_refusals)]
    attack.append(asyncio.create_task(storm_joins()))

    latencies = []
    talk = room()
    try:
        async with (
            stack.connect(f"/ws/chat/{talk}/", sessions["alice"]) as alice,
            stack.connect(f"/ws/chat/{talk}/", sessions["dave"]) as dave,
        ):
            await recv_until(alice, protocol.CHAT_HISTORY), await recv_until(dave, protocol.CHAT_HISTORY)
            await asyncio.sleep(1)  # the flood is under way
            for n in range(40):
                sent = time.monotonic()
                await send_json(alice, {"type": "chat.message", "message": f"m{n}", "client_id": f"c{n}"})
                assert (await recv_until(dave, protocol.CHAT_MESSAGE, 10))["message"] == f"m{n}"
                latencies.append(time.monotonic() - sent)
                await asyncio.sleep(0.25)
    finally:
        stop.set()
        for task in attack:
            task.cancel()
        await asyncio.gather(*attack, return_exceptions=True)
        for ws in sockets:
            await ws.close()

    p99 = statistics.quantiles(latencies, n=100)[98]
    log.info(
        "another room's message latency under the flood: p50 %.1f ms, p99 %.1f ms, max %.1f ms; refused: %s",
        statistics.median(latencies) * 1000,
        p99 * 1000,
        max(latencies) * 1000,
        json.dumps(refusals),
    )
    assert refusals["rate_limited"] > 0 and refusals["closed"] > 0, "the flood was never refused"
    assert p99 <= FLOODED_P99_MAX_S, latencies


class TestManySocketsCloseAtOnce:
    """A network blink or a client restart closes hundreds of one user's sockets in the same
    instant: every place goes back, in batches, without exhausting the web process's Redis
    connections (each close used to send its own command at once)."""

    SOCKETS = 400

    @pytest.fixture(scope="class")
    @classmethod
    def stack(cls, tmp_path_factory, redis_url):
        yield from make_stack(tmp_path_factory, redis_url, SOCKETS_PER_USER_MAX=str(cls.SOCKETS))

    async def test_every_place_goes_back(self, stack):
        import redis as redis_sync

        from project import keys

        stack.create_users("wave")
        session = stack.login("wave")
        client = redis_sync.Redis.from_url(stack.env["REDIS_URL"])
        places = (
            keys.USER_SOCKETS
            + "user:"
            + stack.manage(
                "shell",
                "--no-imports",
                "-c",
                "from django.contrib.auth.models import User; print(User.objects.get(username='wave').pk)",
            ).strip()
        )
        try:
            sockets = []
            for _ in range(0, self.SOCKETS, 50):
                sockets += await asyncio.gather(*(stack.connect("/ws/status/", session) for _ in range(50)))
            assert client.zcard(places) == self.SOCKETS, client.keys(keys.USER_SOCKETS + "*")

            await asyncio.gather(*(ws.transport.abort() or asyncio.sleep(0) for ws in sockets))
            deadline = time.monotonic() + 5
            while client.zcard(places) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert client.zcard(places) == 0
            assert "could not release" not in stack.read_log("web")
        finally:
            client.close()
