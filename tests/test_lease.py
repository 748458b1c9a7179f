"""The scheduler's fenced lease (scheduler/lease.py), against a private Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio

from project import keys
from scheduler.lease import Lease
from workers.feed import Admission, FeedStore

TTL_MS = 300
LAPSE_S = 0.4


@pytest.fixture
async def client(redis_url):
    client = redis.asyncio.Redis.from_url(redis_url)
    await client.flushall()
    yield client
    await client.aclose()


async def test_first_acquire_gives_token_1_and_holds_the_key(client):
    lease = Lease(client, "a", TTL_MS)

    token = await lease.acquire()

    assert token == 1
    assert await client.get(keys.SCHEDULER_LEASE) == b"a 1"


async def test_a_second_holder_gets_nothing_while_the_lease_is_held(client):
    await Lease(client, "a", TTL_MS).acquire()
    second = Lease(client, "b", TTL_MS)

    assert await second.acquire() is None
    assert second.token is None


async def test_renewing_keeps_the_lease_past_its_ttl(client):
    holder = Lease(client, "a", TTL_MS)
    await holder.acquire()
    renewed = []
    for _ in range(3):
        await asyncio.sleep(TTL_MS / 2000)
        renewed.append(await holder.renew())

    assert renewed == [True, True, True]
    assert await Lease(client, "b", TTL_MS).acquire() is None


async def test_after_the_lease_lapses_another_holder_takes_it_with_a_larger_token(client):
    first = Lease(client, "a", TTL_MS)
    await first.acquire()
    await asyncio.sleep(LAPSE_S)
    second = Lease(client, "b", TTL_MS)

    token = await second.acquire()

    assert token == 2
    assert await first.renew() is False
    assert first.token is None


async def test_release_lets_another_holder_acquire_at_once(client):
    first = Lease(client, "a", 60_000)
    await first.acquire()

    await first.release()

    assert await Lease(client, "b", 60_000).acquire() == 2


async def test_a_lapsed_holder_cannot_release_its_successors_lease(client):
    first = Lease(client, "a", TTL_MS)
    await first.acquire()
    await asyncio.sleep(LAPSE_S)
    await Lease(client, "b", TTL_MS).acquire()

    await first.release()

    assert await client.get(keys.SCHEDULER_LEASE) == b"b 2"


async def test_the_feed_refuses_a_deposed_leaders_token_and_admits_its_successors(client, redis_url):
    deposed = Lease(client, "a", TTL_MS)
    deposed_token = await deposed.acquire()
    await asyncio.sleep(LAPSE_S)
    leader_token = await Lease(client, "b", TTL_MS).acquire()

    with redis.Redis.from_url(redis_url) as sync_client:
        feed = FeedStore(sync_client)
        refused = feed.admit(deposed_token, 1000)
        admitted = feed.admit(leader_token, 2000)

    assert refused in ("not_leader", "stale_token")
    assert isinstance(admitted, Admission)
