"""The status worker's views and the fleet it publishes in Redis, with ApplicationCommunicator,
an in-memory layer and a private Redis (the harness of tests/test_status_worker.py)."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from project import keys, protocol
from project.protocol import StatusView
from project.reportqueue import REPORT, Entry
from project.reports import check_report
from project.statusviews import REGISTER, SNAPSHOT, register_call, snapshot_call, snapshot_from
from workers import fleet
from workers.feed import FeedStore

from .conftest import TEST_LEASE_TOKEN
from .test_status_worker import NS_PER_MS, RECEIVE_TIMEOUT_S, Harness, feed_redis, worker  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)


async def watching(worker: Harness, client, view: StatusView) -> str:
    """A socket in ``view``'s group, the view registered as a web process registers it."""
    socket = await worker.layer.new_channel()
    await worker.layer.group_add(view.group, socket)
    script_keys, args = register_call([view])
    client.eval(REGISTER, len(script_keys), *script_keys, *args)
    return socket


async def received(worker: Harness, socket: str) -> dict:
    async with asyncio.timeout(RECEIVE_TIMEOUT_S):
        return json.loads((await worker.layer.receive(socket))["text"])


async def apply_now(entry: Entry) -> None:
    """Apply a report to the database directly, as a tick does, without any update carrying it."""
    await sync_to_async(fleet.apply_entries)([entry], timezone.now())


def published_snapshot(client, view: StatusView | None) -> dict:
    script_keys, args = snapshot_call(view)
    return json.loads(snapshot_from(view, client.eval(SNAPSHOT, len(script_keys), *script_keys, *args)).text)


async def test_a_watched_view_gets_the_rows_of_its_page_that_changed(worker, leading_redis):
    first_page = await watching(worker, leading_redis, StatusView(page=1))
    failed = await watching(worker, leading_redis, StatusView(state="failed"))
    await worker.report(
        "m1",
        {
            "state": "provisioning",
            "progress": 10,
            "software": [{"name": "a", "state": "installing", "percent": 10}],
        },
    )
    await worker.report("m2", {"state": "failed", "progress": 50})

    whole = await worker.ticked()
    page, failing = await received(worker, first_page), await received(worker, failed)

    assert [m["name"] for m in whole["machines"]] == ["m1", "m2"]
    assert page["seq"] == failing["seq"] == whole["seq"]
    assert page["view"] == {
        "page": 1,
        "state": None,
        "search": None,
        "total": 2,
        "page_size": protocol.STATUS_PAGE_SIZE,
    }
    assert [row[:3] for row in page["rows"]] == [["m1", "provisioning", 10], ["m2", "failed", 50]]
    assert page["rows"][0][4] == [["a", "installing", 10]]
    assert [row[0] for row in failing["rows"]] == ["m2"] and failing["view"]["total"] == 1
    assert page["summary"] == whole["summary"] and page["system"] == whole["system"]


async def test_a_machine_leaving_a_view_is_listed_as_removed(worker, leading_redis):
    failed = await watching(worker, leading_redis, StatusView(state="failed"))
    await worker.report("m1", {"state": "failed"})
    await worker.ticked()
    await received(worker, failed)
    await worker.report("m1", {"state": "ready"})

    await worker.ticked()
    update = await received(worker, failed)

    assert (update["rows"], update["removed"], update["view"]["total"]) == ([], ["m1"], 0)


async def test_a_view_registered_while_an_update_is_built_still_gets_that_update(
    worker, leading_redis, monkeypatch
):
    """The web process registers its view, then reads the snapshot: if the worker read the
    registry before the registration, it must not store the update without the view."""
    late = StatusView(page=1, search="m")
    socket = await worker.layer.new_channel()
    await worker.layer.group_add(late.group, socket)
    rows = FeedStore.rows

    def registered_meanwhile(feed, names):
        script_keys, args = register_call([late])
        leading_redis.eval(REGISTER, len(script_keys), *script_keys, *args)
        monkeypatch.setattr(FeedStore, "rows", rows)
        return rows(feed, names)

    # Called after the worker read the registry, before it stores the update.
    monkeypatch.setattr(FeedStore, "rows", registered_meanwhile)
    await worker.report("m1", {"state": "ready"})

    whole = await worker.ticked()
    update = await received(worker, socket)

    assert update["seq"] == whole["seq"] == 1
    assert [row[0] for row in update["rows"]] == ["m1"]


async def test_the_published_fleet_is_what_the_updates_carried(worker, leading_redis):
    await worker.report("m1", {"state": "provisioning", "progress": 10})
    await worker.report("m2", {"state": "ready", "progress": 100})
    update = await worker.ticked()
    # Applied to the database but carried by no update yet (a tick under way): not published.
    await apply_now(Entry("9999999999999-0", REPORT, "m1", check_report("m1", {"state": "failed"})))

    whole = published_snapshot(leading_redis, None)
    failed = published_snapshot(leading_redis, StatusView(state="failed"))

    assert (whole["epoch"], whole["seq"]) == (update["epoch"], update["seq"])
    assert whole["machines"] == update["machines"]
    assert whole["summary"] == update["summary"]
    assert failed["rows"] == [] and failed["view"]["total"] == 0


async def test_a_fleet_already_in_the_database_is_published_once_per_epoch(worker, leading_redis):
    await apply_now(Entry("1-0", REPORT, "old", check_report("old", {"state": "ready"})))

    first = await worker.ticked()
    before_flush = published_snapshot(leading_redis, StatusView())
    leading_redis.flushall()
    leading_redis.set(keys.SCHEDULER_LEASE, f"test-holder {TEST_LEASE_TOKEN}")
    again = await worker.ticked()
    after_flush = published_snapshot(leading_redis, StatusView())

    assert first["machines"] == [] and again["epoch"] != first["epoch"]
    assert [row[0] for row in before_flush["rows"]] == [row[0] for row in after_flush["rows"]] == ["old"]
    assert after_flush["epoch"] == again["epoch"]


async def test_view_frames_stored_but_not_sent_are_sent_again(worker, leading_redis):
    view = StatusView(page=1)
    socket = await watching(worker, leading_redis, view)
    await worker.ticked()
    await received(worker, socket)
    feed = FeedStore(leading_redis)
    admission = feed.admit(TEST_LEASE_TOKEN, worker.next_tick_ns() // NS_PER_MS)
    leading_redis.hset(
        keys.STATUS_LAST_VIEWS, view.group, json.dumps({"seq": admission.seq + 1, "view": "unsent"})
    )
    feed.store(admission, json.dumps({"seq": admission.seq + 1}), {})  # and the worker that stored it died

    await worker.tick()

    assert await received(worker, socket) == {"seq": admission.seq + 1, "view": "unsent"}
    assert (await received(worker, socket))["seq"] == admission.seq + 2


async def test_an_update_stored_without_the_fleet_has_the_whole_fleet_published_again(worker, leading_redis):
    await worker.report("m1", {"state": "provisioning"})
    await worker.ticked()
    feed = FeedStore(leading_redis)
    admission = feed.admit(TEST_LEASE_TOKEN, worker.next_tick_ns() // NS_PER_MS)
    feed.store(admission, json.dumps({"seq": admission.seq + 1}), {})  # as a worker of an older version
    feed.mark_sent(admission.seq + 1)
    script_keys, args = snapshot_call(None)
    unpublished = snapshot_from(None, leading_redis.eval(SNAPSHOT, len(script_keys), *script_keys, *args))
    await apply_now(Entry("9999999999999-0", REPORT, "m1", check_report("m1", {"state": "failed"})))

    update = await worker.ticked()
    snapshot = published_snapshot(leading_redis, None)

    assert unpublished is None
    assert (snapshot["seq"], [(m["name"], m["state"]) for m in snapshot["machines"]]) == (
        update["seq"],
        [("m1", "failed")],
    )


def test_the_registry_holds_at_most_status_views_max_views(leading_redis, monkeypatch):
    def register(*views: StatusView) -> int:
        script_keys, args = register_call(views)
        return leading_redis.eval(REGISTER, len(script_keys), *script_keys, *args)

    first = [StatusView(page=page) for page in range(1, protocol.STATUS_VIEWS_MAX + 1)]
    assert register(*first) == protocol.STATUS_VIEWS_MAX
    assert register(StatusView(state="failed")) == -1
    assert register(first[0]) == 0  # one already there is renewed
    monkeypatch.setattr("project.statusviews.VIEW_TTL_MS", -1)
    register(*first[1:])  # their deadlines pass: the next registration drops them
    monkeypatch.undo()

    assert register(StatusView(state="failed")) == 1
    assert leading_redis.hlen(keys.STATUS_VIEWS) == 2
