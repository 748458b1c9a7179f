"""The status feed's delta bookkeeping and the status worker, with an in-memory layer."""

from __future__ import annotations

import json
import time

import pytest
from channels.testing import ApplicationCommunicator

from project import protocol
from project.reports import ReportErrors, check_report
from workers.feed import StatusFeed, Step
from workers.models import Machine
from workers.status import StatusWorker


def test_feed_hands_over_changes_once():
    feed = StatusFeed(worker_epoch="w")
    feed.mark_changed(["b", "a"])
    feed.mark_changed(["a"])
    assert feed.advance() == Step(seq=1, changed=["a", "b"], removed=[])
    assert feed.advance() == Step(seq=2, changed=[], removed=[])


def test_feed_removal_wins_over_an_earlier_change_and_vice_versa():
    feed = StatusFeed(worker_epoch="w")
    feed.mark_changed(["a", "b"])
    feed.mark_removed("a")
    feed.mark_removed("b")
    feed.mark_changed(["b"])  # re-reported after removal: it exists again
    assert feed.advance() == Step(seq=1, changed=["b"], removed=["a"])


def test_feed_epoch_follows_the_scheduler_and_restarts_seq():
    feed = StatusFeed(worker_epoch="w")
    assert feed.follow("s1") is True
    feed.advance(), feed.advance()
    assert feed.follow("s1") is False
    assert feed.seq == 2
    assert feed.follow("s2") is True
    assert (feed.epoch, feed.seq) == ("s2-w", 0)
    assert feed.advance().seq == 1


def test_two_feeds_never_share_an_epoch():
    assert StatusFeed().epoch != StatusFeed().epoch


def test_report_checker_normalises():
    report = check_report("m-1.example", {"state": "ready", "software": [{"name": "a", "state": "done", "percent": 100}]})
    assert report == {"state": "ready", "progress": None, "software": [{"name": "a", "state": "done", "percent": 100.0}]}


def test_report_checker_lists_every_problem():
    with pytest.raises(ReportErrors) as raised:
        check_report("ok", {"state": "ready", "extra": 1, "software": [{"name": "a", "state": "done", "percent": 1}, {"name": "a", "state": "?", "percent": True}]})
    assert set(raised.value.errors) == {"body", "software[1].name", "software[1].state", "software[1].percent"}


@pytest.mark.django_db(transaction=True)
class TestStatusWorker:
    @pytest.fixture
    async def worker(self, channel_layer):
        self.layer = channel_layer
        self.socket = await channel_layer.new_channel()
        await channel_layer.group_add(protocol.STATUS_GROUP, self.socket)
        app = ApplicationCommunicator(StatusWorker.as_asgi(), {"type": "channel", "channel": protocol.STATUS_WORKER})
        yield app
        app.stop()

    async def received(self) -> dict:
        return json.loads((await self.layer.receive(self.socket))["text"])

    async def tick(self, app, epoch: str = "s1") -> dict:
        now = time.time_ns()
        await app.send_input({"type": "status.tick", "seq": 1, "tick_ns": now, "sent_ns": now, "epoch": epoch})
        return await self.received()

    async def test_report_then_tick_carries_the_whole_machine_once(self, worker):
        body = {"state": "provisioning", "software": [{"name": "a", "state": "installing", "percent": 30}, {"name": "b", "state": "done", "percent": 100}]}
        await worker.send_input({"type": "fleet.report", "name": "m1", "report": check_report("m1", body)})
        first = await self.tick(worker)
        second = await self.tick(worker)
        assert [m["name"] for m in first["machines"]] == ["m1"]
        assert first["machines"][0]["progress"] == 65  # mean of its packages when not reported
        assert second["machines"] == [] and second["seq"] == first["seq"] + 1
        assert first["summary"]["states"]["provisioning"] == 1

    async def test_stale_tick_is_dropped(self, worker):
        fresh = await self.tick(worker)
        old = time.time_ns() - 2_000_000_000
        await worker.send_input({"type": "status.tick", "seq": 2, "tick_ns": old, "sent_ns": old, "epoch": "s1"})
        after = await self.tick(worker)
        assert after["seq"] == fresh["seq"] + 1

    async def test_snapshot_reports_the_current_seq(self, worker):
        update = await self.tick(worker)
        await worker.send_input({"type": "status.join", "reply_channel": self.socket})
        snapshot = await self.received()
        assert (snapshot["type"], snapshot["epoch"], snapshot["seq"]) == ("status.snapshot", update["epoch"], update["seq"])

    async def test_snapshot_is_built_once_per_tick_and_the_next_update_covers_later_reports(self, worker, monkeypatch):
        from workers import fleet

        builds = []
        build = fleet.machines
        monkeypatch.setattr(fleet, "machines", lambda names=None: builds.append(names) or build(names))
        await self.tick(worker)
        report = check_report("late", {"state": "pending"})
        await worker.send_input({"type": "status.join", "reply_channel": self.socket})
        first = await self.received()
        await worker.send_input({"type": "fleet.report", "name": "late", "report": report})
        await worker.send_input({"type": "status.join", "reply_channel": self.socket})
        second = await self.received()
        assert second == first and builds == [None]  # one build for both joins, despite the report
        update = await self.tick(worker)
        assert update["seq"] == first["seq"] + 1 and [m["name"] for m in update["machines"]] == ["late"]

    async def test_expire_marks_silent_provisioning_machines_offline(self, worker, settings):
        settings.OFFLINE_AFTER = 0
        await worker.send_input({"type": "fleet.report", "name": "m2", "report": check_report("m2", {"state": "provisioning"})})
        await worker.send_input({"type": "fleet.report", "name": "m3", "report": check_report("m3", {"state": "ready"})})
        await worker.send_input({"type": "fleet.expire"})
        update = await self.tick(worker)
        states = {m["name"]: m["state"] for m in update["machines"]}
        assert states == {"m2": "offline", "m3": "ready"}
        assert await Machine.objects.filter(state="offline").acount() == 1

    async def test_a_failing_message_does_not_restart_the_feed(self, worker):
        before = await self.tick(worker)
        await worker.send_input({"type": "fleet.report", "name": "broken"})  # no report: the handler raises
        after = await self.tick(worker)
        assert (after["epoch"], after["seq"]) == (before["epoch"], before["seq"] + 1)
