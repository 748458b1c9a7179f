"""Replies to closed sockets are dropped, not kept (project/orphans.py).

First the mechanism, on a real channels_redis layer: a reply that reaches a closed socket's
channel is dropped, and the channel's entry goes once no reply can come any more. Then web memory
over the real Procfile processes: each cycle opens a chat socket on a room whose join page is
~85 KB and closes it as soon as the handshake is done, so the page reaches the web process after
its socket is gone. Kept, 1,500 of them grew the web processes by ~136 MB.
"""

from __future__ import annotations

import asyncio
import logging

import psutil
import pytest
from channels_redis.core import RedisChannelLayer

from project import orphans, protocol

from .conftest import make_stack
from .stack import Stack

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

ROOM = "big-history"
MESSAGE_CHARS = 1_700  # x 50 messages on the join page: ~85 KB
WARM_UP_CYCLES = 300
CYCLES = 1_500
CONCURRENCY = 8
SETTLE_S = 3
RSS_GROWTH_MAX_MIB = 10


async def test_a_reply_to_a_closed_channel_is_dropped_and_its_entry_goes(redis_url):
    layer = RedisChannelLayer(hosts=[redis_url])
    closed, live = await layer.new_channel(), await layer.new_channel()
    try:
        orphans.forget(layer, closed)
        await layer.send(closed, {"type": "chat.history", "text": "late"})
        await layer.send(live, {"type": "chat.message", "text": "hi"})

        # Receiving for ``live`` reads the process's key, the late reply first, and sorts it.
        assert (await layer.receive(live))["text"] == "hi"
        assert closed in layer.receive_buffer and layer.receive_buffer[closed].empty()

        sweeper = layer.orphan_sweeper
        sweeper.sweep(sweeper.loop.time() + sweeper.window_s - SETTLE_S)
        assert closed in layer.receive_buffer
        sweeper.sweep(sweeper.loop.time() + sweeper.window_s)
        assert closed not in layer.receive_buffer
    finally:
        await layer.flush()
        await layer.close_pools()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url):
    yield from make_stack(tmp_path_factory, redis_url)


@pytest.fixture(scope="module")
def session(stack: Stack) -> str:
    stack.create_users("leaver")
    seed_history(stack)
    return stack.login("leaver")


def seed_history(stack: Stack) -> None:
    """A full join page of long messages, stored as the worker stores them."""
    count = protocol.HISTORY_ON_JOIN
    stack.manage(
        "shell",
        "-c",
        (
            "from django.utils import timezone\n"
            "from workers.models import Message, Room\n"
            f"Room.objects.create(name={ROOM!r}, last_offset={count}, last_message_at=timezone.now())\n"
            f"Message.objects.bulk_create(Message(room={ROOM!r}, offset=n, author='seed', body=f'{{n}} ' + 'x' * {MESSAGE_CHARS})"
            f" for n in range(1, {count + 1}))\n"
        ),
    )


def web_rss_mib(stack: Stack) -> float:
    """Resident memory of the web server and its worker processes."""
    web = psutil.Process(stack.processes["web"].pid)
    return sum(process.memory_info().rss for process in [web, *web.children(recursive=True)]) / 2**20


async def join_and_leave(stack: Stack, session: str, cycles: int) -> None:
    """``cycles`` sockets, ``CONCURRENCY`` at a time, each closed right after its handshake."""
    remaining = iter(range(cycles))

    async def client() -> None:
        for _ in remaining:
            async with stack.connect(f"/ws/chat/{ROOM}/", session):
                pass

    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))


async def test_join_and_leave_leaves_web_memory_where_it_was(stack, session):
    await join_and_leave(stack, session, WARM_UP_CYCLES)  # imports, caches, allocator arenas
    await asyncio.sleep(SETTLE_S)
    before_mib = web_rss_mib(stack)

    await join_and_leave(stack, session, CYCLES)
    await asyncio.sleep(SETTLE_S)
    after_mib = web_rss_mib(stack)

    log.info("web RSS %.1f MiB before %d join-and-leaves, %.1f MiB after", before_mib, CYCLES, after_mib)
    assert after_mib - before_mib < RSS_GROWTH_MAX_MIB, f"{before_mib:.1f} -> {after_mib:.1f} MiB"
