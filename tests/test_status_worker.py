"""The status worker with Channels' ApplicationCommunicator, an in-memory layer and a private Redis.

The feed's state and the reports stream live in that Redis (``workers/feed.py``,
``project/reportqueue.py``); every test starts from it empty, with a scheduler lease whose
token the ticks carry.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import redis
import redis.asyncio
from channels.testing import ApplicationCommunicator
from django.utils import timezone

from project import keys, protocol
from project.reportqueue import REMOVE, REPORT, Entry, enqueue
from project.reports import ReportErrors, check_report
from workers import fleet, status
from workers.feed import FeedStore
from workers.models import Machine
from workers.status import StatusWorker

from .conftest import TEST_LEASE_TOKEN, lead

TOKEN = TEST_LEASE_TOKEN
MAX_WAITING = 100
RECEIVE_TIMEOUT_S = 5
NS_PER_MS = 1_000_000

pytestmark = pytest.mark.django_db(transaction=True)


class Harness:
    """Status workers on one channel, a socket in the status group, and the report API's queue."""

    def __init__(self, layer, socket: str, queue: redis.asyncio.Redis) -> None:
        self.layer = layer
        self.socket = socket
        self.queue = queue
        self.workers: list[ApplicationCommunicator] = []
        self.app = self.start_worker()
        self.last_tick_ns = 0

    def start_worker(self) -> ApplicationCommunicator:
        app = ApplicationCommunicator(
            StatusWorker.as_asgi(), {"type": "channel", "channel": protocol.STATUS_WORKER}
        )
        self.workers.append(app)
        return app

    def stop(self) -> None:
        for app in self.workers:
            app.stop()
        status.stop_saying_alive()  # its Redis goes with the test

    async def report(self, name: str, body: dict) -> None:
        await enqueue(self.queue, REPORT, name, check_report(name, body), MAX_WAITING)

    async def remove(self, name: str) -> None:
        await enqueue(self.queue, REMOVE, name, None, MAX_WAITING)

    def next_tick_ns(self) -> int:
        """Now, but always at least a millisecond after the last tick (the feed admits by ms)."""
        self.last_tick_ns = max(time.time_ns(), self.last_tick_ns + NS_PER_MS)
        return self.last_tick_ns

    async def tick(
        self, tick_ns: int | None = None, token: int = TOKEN, app: ApplicationCommunicator | None = None
    ) -> int:
        tick_ns = self.next_tick_ns() if tick_ns is None else tick_ns
        message = {"type": protocol.STATUS_TICK, "tick_ns": tick_ns, "token": token, "sent_ns": tick_ns}
        await (app or self.app).send_input(message)
        return tick_ns

    async def apply(self, at_ns: int | None = None) -> None:
        """What the scheduler sends half a second after each tick."""
        at_ns = time.time_ns() if at_ns is None else at_ns
        await self.app.send_input({"type": protocol.STATUS_APPLY, "at_ns": at_ns})

    async def received(self) -> dict:
        async with asyncio.timeout(RECEIVE_TIMEOUT_S):
            return json.loads((await self.layer.receive(self.socket))["text"])

    async def ticked(self, app: ApplicationCommunicator | None = None) -> dict:
        """Tick, and the update it was turned into."""
        await self.tick(app=app)
        return await self.received()

    async def join(self) -> dict:
        await self.app.send_input({"type": protocol.STATUS_JOIN, "reply_channel": self.socket})
        return await self.received()


@pytest.fixture
def feed_redis(leading_redis):
    return leading_redis


@pytest.fixture
async def worker(channel_layer, feed_redis, redis_url):
    socket = await channel_layer.new_channel()
    await channel_layer.group_add(protocol.STATUS_GROUP, socket)
    queue = redis.asyncio.Redis.from_url(redis_url)
    harness = Harness(channel_layer, socket, queue)
    yield harness
    harness.stop()
    await queue.aclose()


def test_report_checker_normalises():
    report = check_report(
        "m-1.example", {"state": "ready", "software": [{"name": "a", "state": "done", "percent": 100}]}
    )
    assert report == {
        "state": "ready",
        "progress": None,
        "software": [{"name": "a", "state": "done", "percent": 100.0}],
    }


def test_report_checker_lists_every_problem():
    with pytest.raises(ReportErrors) as raised:
        check_report(
            "ok",
            {
                "state": "ready",
                "extra": 1,
                "software": [
                    {"name": "a", "state": "done", "percent": 1},
                    {"name": "a", "state": "?", "percent": True},
                ],
            },
        )
    assert set(raised.value.errors) == {
        "body",
        "software[1].name",
        "software[1].state",
        "software[1].percent",
    }


def apply(name: str, body: dict, report_id: str) -> bool:
    """Apply one report as a tick would; whether it was applied."""
    entry = Entry(report_id, REPORT, name, check_report(name, body))
    return fleet.apply_entries([entry], timezone.now()).reported == 1


def remove(name: str, report_id: str) -> bool:
    return fleet.apply_entries([Entry(report_id, REMOVE, name, None)], timezone.now()).removed == 1


def test_a_report_older_than_the_applied_one_does_not_roll_the_machine_back():
    apply("m1", {"state": "ready", "progress": 100}, "10000-0")

    applied = apply("m1", {"state": "provisioning", "progress": 10}, "9999-0")

    machine = Machine.objects.get(name="m1")
    assert applied is False
    assert (machine.state, machine.progress, machine.report_id) == ("ready", 100, "10000-0")


def test_a_report_delivered_again_is_not_applied_twice():
    report = {"state": "provisioning", "software": [{"name": "a", "state": "installing", "percent": 10}]}
    apply("m1", report, "2000-0")

    applied = apply("m1", report, "2000-0")

    assert applied is False


def test_a_newer_report_is_applied():
    apply("m1", {"state": "provisioning", "progress": 10}, "2000-0")

    applied = apply("m1", {"state": "ready", "progress": 100}, "2000-1")

    assert applied is True
    assert Machine.objects.get(name="m1").state == "ready"


def test_a_removal_is_not_undone_by_an_older_report_delivered_again():
    apply("m1", {"state": "provisioning"}, "1000-0")
    remove("m1", "3000-0")

    applied = apply("m1", {"state": "provisioning"}, "2000-0")

    assert applied is False
    assert not Machine.objects.filter(name="m1").exists()
    assert apply("m1", {"state": "ready"}, "4000-0") is True


def test_a_removal_older_than_the_last_report_is_not_applied():
    apply("m1", {"state": "ready"}, "2000-0")

    assert remove("m1", "1000-0") is False
    assert Machine.objects.get(name="m1").state == "ready"


async def test_report_then_tick_carries_the_whole_machine_once(worker):
    body = {
        "state": "provisioning",
        "software": [
            {"name": "a", "state": "installing", "percent": 30},
            {"name": "b", "state": "done", "percent": 100},
        ],
    }
    await worker.report("m1", body)

    first = await worker.ticked()
    second = await worker.ticked()

    assert [m["name"] for m in first["machines"]] == ["m1"]
    assert first["machines"][0]["progress"] == 65  # mean of its packages when not reported
    assert first["summary"]["states"]["provisioning"] == 1
    assert second["machines"] == [] and second["seq"] == first["seq"] + 1


async def test_a_removal_is_carried_as_removed(worker):
    await worker.report("m1", {"state": "ready"})
    await worker.ticked()
    await worker.remove("m1")

    update = await worker.ticked()

    assert (update["machines"], update["removed"]) == ([], ["m1"])
    assert await Machine.objects.acount() == 0


async def test_reports_leave_the_stream_once_an_update_carries_them(worker, feed_redis):
    await worker.report("m1", {"state": "ready"})
    await worker.tick()

    update = await worker.received()  # sent first: acknowledging the reports comes after it
    for _ in range(200):
        if feed_redis.xlen(keys.REPORTS_STREAM) == 0:
            break
        await asyncio.sleep(0.01)

    assert [machine["name"] for machine in update["machines"]] == ["m1"]
    assert feed_redis.xlen(keys.REPORTS_STREAM) == 0


async def eventually(check, timeout_s: float = RECEIVE_TIMEOUT_S) -> None:
    """Wait until ``check()`` is true (the worker answers an apply with nothing to wait on)."""
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.01)


async def test_an_apply_between_ticks_applies_and_acknowledges_the_queued_reports(worker, feed_redis):
    await worker.report("m1", {"state": "ready"})
    await worker.report("m2", {"state": "provisioning", "progress": 40})
    await worker.ticked()
    await worker.remove("m1")
    await worker.report("m2", {"state": "provisioning", "progress": 60})

    await worker.apply()

    async def applied() -> bool:
        return feed_redis.xlen(keys.REPORTS_STREAM) == 0  # acknowledged (and deleted) once applied

    await eventually(applied)
    assert not await Machine.objects.filter(name="m1").aexists()
    assert (await Machine.objects.aget(name="m2")).progress == 60
    update = await worker.ticked()  # the apply sent nothing: this is the next update
    assert [(m["name"], m["progress"]) for m in update["machines"]] == [("m2", 60)]
    assert update["removed"] == ["m1"]


async def test_an_apply_the_worker_gets_late_is_dropped(worker, feed_redis):
    await worker.report("m1", {"state": "ready"})
    await worker.apply(at_ns=time.time_ns() - 2_000_000_000)  # a backlog of them, say

    await worker.join()  # answered after the apply: a worker takes its messages in order

    assert feed_redis.xlen(keys.REPORTS_STREAM) == 1
    assert not await Machine.objects.filter(name="m1").aexists()
    update = await worker.ticked()
    assert [m["name"] for m in update["machines"]] == ["m1"]


async def test_stale_tick_is_dropped(worker):
    await worker.tick(tick_ns=time.time_ns() - 2_000_000_000)
    fresh_ns = await worker.tick()

    update = await worker.received()

    assert (update["seq"], update["tick_ns"]) == (1, fresh_ns)


async def test_tick_with_a_token_that_is_not_the_leases_is_refused(worker):
    await worker.tick(token=TOKEN + 1)
    leaders_ns = await worker.tick(token=TOKEN)

    update = await worker.received()

    assert (update["seq"], update["tick_ns"]) == (1, leaders_ns)


async def test_tick_with_a_token_older_than_one_admitted_is_refused(worker, feed_redis):
    lead(feed_redis, 2)
    await worker.tick(token=2)
    first = await worker.received()
    lead(feed_redis, 1)  # the lease somehow back with an older token
    await worker.tick(token=1)
    lead(feed_redis, 3)
    newest_ns = await worker.tick(token=3)

    update = await worker.received()

    assert (update["seq"], update["tick_ns"]) == (first["seq"] + 1, newest_ns)


async def test_the_same_tick_twice_makes_one_update(worker):
    tick_ns = worker.next_tick_ns()
    await worker.tick(tick_ns=tick_ns)
    await worker.tick(tick_ns=tick_ns)
    next_ns = await worker.tick()

    first, second = await worker.received(), await worker.received()

    assert (first["seq"], first["tick_ns"]) == (1, tick_ns)
    assert (second["seq"], second["tick_ns"]) == (2, next_ns)


async def test_snapshot_reports_the_current_epoch_and_seq(worker):
    await worker.ticked()
    update = await worker.ticked()

    snapshot = await worker.join()

    assert (snapshot["type"], snapshot["epoch"], snapshot["seq"]) == (
        "status.snapshot",
        update["epoch"],
        update["seq"],
    )


async def test_snapshot_is_the_fleet_as_the_stored_updates_left_it(worker):
    await worker.report("m1", {"state": "ready"})
    first = await worker.ticked()
    before = await worker.join()
    await worker.report("late", {"state": "pending"})
    update = await worker.ticked()

    after = await worker.join()

    assert before["seq"] == first["seq"] and before["machines"] == first["machines"]
    assert after["seq"] == update["seq"] == first["seq"] + 1
    assert [m["name"] for m in after["machines"]] == ["late", "m1"]
    assert after["summary"] == update["summary"]


async def test_expire_marks_silent_provisioning_machines_offline(worker, settings):
    settings.OFFLINE_AFTER = 0
    await worker.report("m2", {"state": "provisioning"})
    await worker.report("m3", {"state": "ready"})
    reported = await worker.ticked()

    expired = await worker.ticked()

    assert {m["name"]: m["state"] for m in reported["machines"]} == {"m2": "provisioning", "m3": "ready"}
    assert {m["name"]: m["state"] for m in expired["machines"]} == {"m2": "offline"}
    assert await Machine.objects.filter(state="offline").acount() == 1


async def test_an_update_stored_but_not_sent_is_sent_before_the_next(worker, feed_redis):
    await worker.ticked()
    feed = FeedStore(feed_redis)
    admission = feed.admit(TOKEN, worker.next_tick_ns() // NS_PER_MS)
    unsent = {
        "type": protocol.STATUS_UPDATE,
        "epoch": admission.epoch,
        "seq": admission.seq + 1,
        "machines": [],
    }
    feed.store(admission, json.dumps(unsent), {})  # and the worker that stored it died

    await worker.tick()

    assert await worker.received() == unsent
    assert (await worker.received())["seq"] == unsent["seq"] + 1


async def test_a_change_carried_by_a_concurrent_tick_before_its_commit_reaches_a_later_update(
    worker, feed_redis, monkeypatch
):
    """Another worker, on another tick, stores an update between this worker's announcement of
    m1 and its commit: that update carried m1 as it was before. m1 stays pending and the next
    update has it as it is now."""
    await worker.report("m1", {"state": "provisioning"})
    await worker.ticked()
    apply_entries = fleet.apply_entries
    raced = threading.Event()

    def a_concurrent_tick_stores_first(entries, now):
        feed = FeedStore(feed_redis)
        admission = feed.admit(TOKEN, worker.next_tick_ns() // NS_PER_MS)
        update = {"type": protocol.STATUS_UPDATE, "epoch": admission.epoch, "seq": admission.seq + 1}
        feed.store(admission, json.dumps(update), feed.pending())  # carries m1 with its old state
        feed.mark_sent(admission.seq + 1)
        apply_entries(entries, now)
        raced.set()

    monkeypatch.setattr(fleet, "apply_entries", a_concurrent_tick_stores_first)
    await worker.report("m1", {"state": "ready"})
    await worker.tick()  # loses the race: stores nothing
    assert await asyncio.to_thread(raced.wait, RECEIVE_TIMEOUT_S)
    monkeypatch.setattr(fleet, "apply_entries", apply_entries)

    update = await worker.ticked()

    assert [(m["name"], m["state"]) for m in update["machines"]] == [("m1", "ready")]


async def test_epoch_is_kept_and_seq_continues_across_status_workers(worker):
    other = worker.start_worker()

    updates = [await worker.ticked(), await worker.ticked(app=other), await worker.ticked()]

    assert [(u["epoch"], u["seq"]) for u in updates] == [(updates[0]["epoch"], seq) for seq in (1, 2, 3)]


async def test_a_failing_message_does_not_stop_the_worker(worker):
    await worker.app.send_input(
        {"type": protocol.STATUS_TICK, "token": TOKEN}
    )  # no tick_ns: the handler raises

    update = await worker.ticked()

    assert update["seq"] == 1
