"""A web process whose Redis goes silent tells its sockets (1011) and refuses new ones until
Redis answers again (consumers/redis_watch.py).

Silence without root: a private redis-server stopped with SIGSTOP still has its connections
accepted and acknowledged by the kernel, but answers nothing, as behind a firewall that drops
packets. tests/test_multihost.py does the same with a real partition between hosts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from consumers.redis_watch import redis_watch
from project import embedded_redis, protocol

from .test_consumers import ALICE, communicator

LOST_AFTER_S = 1


@pytest.fixture
def pausable_redis(tmp_path, settings, channel_layer):
    """A private Redis for what the web process asks directly (the watch, limits, counts)."""
    server, url = embedded_redis.start(tmp_path)
    settings.REDIS_URL = url
    settings.REDIS_LOST_AFTER_S = LOST_AFTER_S
    yield server
    server.send_signal(signal.SIGCONT)
    server.terminate()
    server.wait(timeout=10)


async def until_found(timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while redis_watch.lost:
            await asyncio.sleep(0.05)


async def test_silent_redis_closes_sockets_with_1011_and_refuses_new_ones_until_it_answers(pausable_redis):
    comm = communicator("/ws/status/", ALICE)
    connected, _ = await comm.connect()
    assert connected

    os.kill(pausable_redis.pid, signal.SIGSTOP)
    silenced_at = time.monotonic()
    try:
        closed = await comm.receive_output(timeout=LOST_AFTER_S + 5)
        told_after_s = time.monotonic() - silenced_at
        assert closed == {
            "type": "websocket.close",
            "code": protocol.CLOSE_TRY_AGAIN,
            "reason": protocol.SERVER_UNAVAILABLE,
        }
        assert LOST_AFTER_S <= told_after_s <= LOST_AFTER_S + 3, told_after_s
        await comm.disconnect()

        refused = communicator("/ws/status/", ALICE)
        started = time.monotonic()
        connected, _ = await refused.connect(timeout=5)
        assert not connected
        assert time.monotonic() - started < LOST_AFTER_S, "the refusal waited on Redis"
    finally:
        os.kill(pausable_redis.pid, signal.SIGCONT)

    await until_found()
    again = communicator("/ws/status/", ALICE)
    connected, _ = await again.connect()
    assert connected
    await again.disconnect()


async def test_sockets_stay_open_through_a_pause_shorter_than_the_bound(pausable_redis):
    comm = communicator("/ws/status/", ALICE)
    connected, _ = await comm.connect()
    assert connected
    os.kill(pausable_redis.pid, signal.SIGSTOP)
    await asyncio.sleep(LOST_AFTER_S / 2)
    os.kill(pausable_redis.pid, signal.SIGCONT)
    assert await comm.receive_nothing(timeout=LOST_AFTER_S + 2)
    assert not redis_watch.lost
    await comm.disconnect()
