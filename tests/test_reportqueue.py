"""The reports stream between the report API and the status workers, against a private Redis."""

from __future__ import annotations

import asyncio
import time

import orjson
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
    assert reportqueue.waiting(client) == 2


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
    assert reportqueue.waiting(client) == 3


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


# --- batches as stream entries ------------------------------------------------------------------


def items(count: int, prefix: str = "m") -> list:
    return [(REPORT, f"{prefix}{number}", {**READY, "seq": number}) for number in range(count)]


async def test_a_batch_is_one_stream_entry_per_hundred_reports_read_back_as_reports(queue, client):
    ids = await enqueue_many(queue, items(250), 1000)

    entries = ReportReader(client, "a").read()

    assert client.xlen(keys.REPORTS_STREAM) == 3  # 100 + 100 + 50
    assert [entry.id for entry in entries] == ids
    assert [entry.name for entry in entries] == [f"m{number}" for number in range(250)]
    assert ids[1] == f"{ids[0]}/1" and ids[100].partition("/")[0] != ids[0]


def test_report_ids_sort_in_queued_order_within_and_across_entries():
    queued = ["5-0", "5-0/1", "5-0/2", "5-0/10", "5-1", "6-0", "6-0/1"]

    assert sorted(reversed(queued), key=reportqueue.stream_order) == queued


async def test_waiting_counts_reports_and_falls_as_entries_are_done(queue, client):
    reader = ReportReader(client, "a")
    await enqueue_many(queue, items(150), 1000)
    await enqueue(queue, REPORT, "single", READY, 1000)
    assert reportqueue.waiting(client) == 151

    reader.done(reader.read())

    assert reportqueue.waiting(client) == 0
    assert client.xlen(keys.REPORTS_STREAM) == 0


async def test_an_entry_done_twice_is_counted_off_once(queue, client):
    await enqueue_many(queue, items(3), 1000)
    await enqueue(queue, REPORT, "other", READY, 1000)
    entries = ReportReader(client, "a").read()

    reader = ReportReader(client, "a")
    reader.done(entries[:3])
    reader.done(entries[:3])  # a worker that claimed them again, or a repeated call

    assert reportqueue.waiting(client) == 1


async def test_a_count_left_wrong_mends_once_the_stream_is_empty(queue, client):
    client.set(keys.REPORTS_WAITING, 5)  # as if Redis failed over between a worker's two scripts

    assert await enqueue(queue, REPORT, "m1", READY, 1) is not None
    assert reportqueue.waiting(client) == 1


async def test_a_reader_takes_at_most_about_items_max_reports_per_read(queue, client, monkeypatch):
    monkeypatch.setattr(reportqueue, "ENTRIES_PER_READ", 2)
    for start in range(5):
        await enqueue_many(queue, items(100, prefix=f"b{start}-"), 10_000)
    reader = ReportReader(client, "a", items_max=300)

    first, second = reader.read(), reader.read()

    assert [len(first), len(second)] == [400, 100]  # whole reads of 2 entries, until 300 are held
    assert first + second == sorted(first + second, key=lambda entry: reportqueue.stream_order(entry.id))


async def test_an_entry_queued_before_batches_is_still_read(queue, client):
    """A web process from before one entry carried many (a rolling deploy) queued a bare report."""
    stream_id = client.xadd(
        keys.REPORTS_STREAM, {"e": orjson.dumps({"kind": REPORT, "name": "old", "report": READY})}
    ).decode()

    entries = ReportReader(client, "a").read()

    assert entries == [Entry(stream_id, REPORT, "old", READY)]


# --- single reports from many requests, queued together -----------------------------------------


async def test_reports_arriving_together_share_one_entry_in_arrival_order(queue, client):
    together = reportqueue.Together(queue, MAX_WAITING)
    names = [f"m{n}" for n in range(30)]

    ids = await asyncio.gather(*(together.enqueue(REPORT, name, READY) for name in names))

    assert len({i.partition("/")[0] for i in ids}) == 1  # one entry
    assert client.xlen(keys.REPORTS_STREAM) == 1 and reportqueue.waiting(client) == 30
    entries = ReportReader(client, "a").read()
    assert [entry.name for entry in entries] == names
    assert [entry.id for entry in entries] == ids


async def test_reports_arriving_while_a_call_is_in_flight_go_in_the_next_one(queue, client):
    together = reportqueue.Together(queue, MAX_WAITING)
    first = asyncio.ensure_future(together.enqueue(REPORT, "first", READY))
    await asyncio.sleep(0)  # the first call is now on its way to Redis
    later = [asyncio.ensure_future(together.enqueue(REPORT, f"later{n}", READY)) for n in range(5)]

    await asyncio.gather(first, *later)

    assert client.xlen(keys.REPORTS_STREAM) == 2
    assert [entry.name for entry in ReportReader(client, "a").read()] == ["first"] + [
        f"later{n}" for n in range(5)
    ]


async def test_reports_queued_together_are_refused_together_when_the_queue_is_full(queue, client):
    await enqueue(queue, REPORT, "already", READY, 10)
    together = reportqueue.Together(queue, 3)

    answers = await asyncio.gather(*(together.enqueue(REPORT, f"m{n}", READY) for n in range(3)))

    assert answers == [None, None, None]  # 1 + 3 would be over 3: none is queued
    assert reportqueue.waiting(client) == 1
    assert await together.enqueue(REPORT, "alone", READY) is not None  # 1 + 1 fits


async def test_each_request_hears_of_a_redis_error_and_the_next_call_tries_again(queue, client, redis_url):
    dead = redis.asyncio.Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.5)
    together = reportqueue.Together(dead, MAX_WAITING)

    answers = await asyncio.gather(
        *(together.enqueue(REPORT, f"m{n}", READY) for n in range(3)), return_exceptions=True
    )

    assert all(isinstance(answer, redis.exceptions.ConnectionError) for answer in answers)
    together.client = queue  # Redis is back
    assert await together.enqueue(REPORT, "after", READY) is not None
    await dead.aclose()


async def test_a_cancelled_request_leaves_the_others_answered(queue, client):
    together = reportqueue.Together(queue, MAX_WAITING)
    gone = asyncio.ensure_future(together.enqueue(REPORT, "gone", READY))
    stays = asyncio.ensure_future(together.enqueue(REPORT, "stays", READY))
    await asyncio.sleep(0)
    gone.cancel()

    assert await stays is not None
    assert [entry.name for entry in ReportReader(client, "a").read()] == ["gone", "stays"]


async def test_more_than_items_per_call_are_queued_in_order_over_several_calls(queue, client, monkeypatch):
    monkeypatch.setattr(reportqueue, "ITEMS_PER_CALL", 4)
    together = reportqueue.Together(queue, MAX_WAITING)

    await asyncio.gather(*(together.enqueue(REPORT, f"m{n:02}", READY) for n in range(10)))

    assert client.xlen(keys.REPORTS_STREAM) == 3  # 4 + 4 + 2
    assert [entry.name for entry in ReportReader(client, "a").read()] == [f"m{n:02}" for n in range(10)]


async def test_a_report_after_a_quiet_spell_is_queued_at_once_whatever_the_linger(queue, client):
    together = reportqueue.Together(queue, MAX_WAITING, linger_s=5.0)

    await asyncio.wait_for(together.enqueue(REPORT, "alone", READY), timeout=2)

    assert reportqueue.waiting(client) == 1


async def test_while_reports_keep_coming_a_call_lingers_for_those_that_follow(queue, client):
    together = reportqueue.Together(queue, MAX_WAITING, linger_s=0.2)
    await together.enqueue(REPORT, "first", READY)  # at once: nothing came before it

    soon = asyncio.ensure_future(together.enqueue(REPORT, "soon", READY))  # lingers: reports keep coming
    await asyncio.sleep(0.05)
    assert client.xlen(keys.REPORTS_STREAM) == 1  # "soon" still waits for company
    later = asyncio.ensure_future(together.enqueue(REPORT, "later", READY))
    await asyncio.gather(soon, later)

    assert client.xlen(keys.REPORTS_STREAM) == 2  # "soon" and "later" went together
    assert soon.result().partition("/")[0] == later.result().partition("/")[0]
    assert [entry.name for entry in ReportReader(client, "a").read()] == ["first", "soon", "later"]
