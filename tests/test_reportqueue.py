"""The reports stream between the report API and the status workers, against a private Redis."""

from __future__ import annotations

import time

import pytest
import redis
import redis.asyncio

from project import keys, reportqueue
from project.reportqueue import REMOVE, REPORT, Entry, ReportReader, enqueue, enqueue_many

MAX_WAITING = 100
READY = {"state": "ready", "progress": 100.0, "software": []}
PENDING = {"state": "pending", "progress": None, "software": []}


@pytest.fixture
def client(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
async def queue(client, redis_url):
    """The report API's side: an asyncio client on the Redis that ``client`` flushed."""
    queue = redis.asyncio.Redis.from_url(redis_url)
    yield queue
    await queue.aclose()


async def test_read_returns_enqueued_entries_in_order(queue, client):
    first = await enqueue(queue, REPORT, "m1", READY, MAX_WAITING)
    second = await enqueue(queue, REPORT, "m2", PENDING, MAX_WAITING)
    third = await enqueue(queue, REMOVE, "m1", None, MAX_WAITING)

    entries = ReportReader(client, "a").read()

    assert entries == [
        Entry(first, REPORT, "m1", READY),
        Entry(second, REPORT, "m2", PENDING),
        Entry(third, REMOVE, "m1", None),
    ]


async def test_an_entry_read_is_not_read_again_by_its_consumer(queue, client):
    reader = ReportReader(client, "a")
    await enqueue(queue, REPORT, "m1", READY, MAX_WAITING)
    reader.read()

    assert reader.read() == []


async def test_done_removes_entries_from_the_stream(queue, client):
    reader = ReportReader(client, "a")
    await enqueue(queue, REPORT, "m1", READY, MAX_WAITING)
    await enqueue(queue, REPORT, "m2", READY, MAX_WAITING)

    reader.done(reader.read())

    assert client.xlen(keys.REPORTS_STREAM) == 0
    assert client.xpending(keys.REPORTS_STREAM, keys.REPORTS_GROUP)["pending"] == 0


async def test_entries_left_unfinished_are_claimed_by_another_consumer_only_after_claim_idle(
    queue, client, monkeypatch
):
    monkeypatch.setattr(reportqueue, "CLAIM_IDLE_MS", 200)
    await enqueue(queue, REPORT, "m1", READY, MAX_WAITING)
    left = ReportReader(client, "a").read()
    survivor = ReportReader(client, "b")

    while_fresh = survivor.read()
    time.sleep(0.3)
    once_idle = survivor.read()

    assert while_fresh == []
    assert once_idle == left and len(left) == 1


async def test_entries_done_are_never_claimed(queue, client, monkeypatch):
    monkeypatch.setattr(reportqueue, "CLAIM_IDLE_MS", 0)
    await enqueue(queue, REPORT, "m1", READY, MAX_WAITING)
    first = ReportReader(client, "a")
    first.done(first.read())

    assert ReportReader(client, "b").read() == []


async def test_enqueue_refuses_once_max_waiting_entries_wait(queue, client):
    await enqueue(queue, REPORT, "m1", READY, 2)
    await enqueue(queue, REPORT, "m2", READY, 2)

    refused = await enqueue(queue, REPORT, "m3", READY, 2)

    assert refused is None
    assert client.xlen(keys.REPORTS_STREAM) == 2


async def test_a_batch_is_queued_in_its_order(queue, client):
    ids = await enqueue_many(
        queue, [(REPORT, "m1", READY), (REPORT, "m2", PENDING), (REPORT, "m1", PENDING)], MAX_WAITING
    )

    entries = ReportReader(client, "a").read()

    assert entries == [
        Entry(ids[0], REPORT, "m1", READY),
        Entry(ids[1], REPORT, "m2", PENDING),
        Entry(ids[2], REPORT, "m1", PENDING),
    ]


async def test_a_batch_that_would_pass_max_waiting_is_refused_whole(queue, client):
    await enqueue(queue, REPORT, "m1", READY, 3)

    refused = await enqueue_many(
        queue, [(REPORT, "m2", READY), (REPORT, "m3", READY), (REPORT, "m4", READY)], 3
    )
    fits = await enqueue_many(queue, [(REPORT, "m2", READY), (REPORT, "m3", READY)], 3)

    assert refused is None
    assert len(fits) == 2
    assert client.xlen(keys.REPORTS_STREAM) == 3


async def test_enqueue_accepts_again_once_waiting_entries_are_done(queue, client):
    reader = ReportReader(client, "a")
    await enqueue(queue, REPORT, "m1", READY, 1)
    reader.done(reader.read())

    accepted = await enqueue(queue, REPORT, "m2", READY, 1)

    assert accepted is not None


async def test_read_recreates_the_group_after_redis_restarts_empty(queue, client):
    reader = ReportReader(client, "a")
    reader.read()
    client.flushall()
    entry_id = await enqueue(queue, REPORT, "m1", READY, MAX_WAITING)

    entries = reader.read()

    assert [entry.id for entry in entries] == [entry_id]
