"""The status worker: turns each admitted tick into one ``status.update``; serves snapshots.

Any number of these may run (``runworker status`` in several processes, on several hosts)
and any may die at any line: the feed's epoch, sequence and pending changes live in Redis
(``workers/feed.py``), the reports answered ``202`` in a Redis stream
(``project/reportqueue.py``). On each tick, the worker that receives it:

1. has the feed admit the tick (only from the lease holder, never stale, never twice);
2. sends the previous update first if its worker died before sending it;
3. reads the queued reports, announces the machines it will change, applies the reports and
   expires silent machines in the database (most reports are applied already: the scheduler
   asks for that half a second after each tick, ``status.apply``, so that a tick's update waits
   only for the last half second's);
4. builds the update from every pending change, for the whole fleet and for each view some
   dashboard shows (project/statusviews.py), and stores it as ``seq + 1`` with the fleet as it
   now publishes it (if another worker stored one first, its changes simply stay pending for
   the next);
5. broadcasts the update once to each group, then acknowledges the reports.

Sockets get their snapshots from the published fleet in Redis, read by their web process
(consumers/fleetviews.py); this worker serves only ``/api/status``'s, from the same place.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis
from django.conf import settings
from django.utils import timezone

from project import heartbeats, keys, protocol, redis_connections
from project.protocol import StatusView
from project.reportqueue import ReportReader
from project.statusviews import (
    SNAPSHOT,
    FleetIndex,
    Published,
    snapshot_call,
    snapshot_from,
    view_change,
    view_header,
)

from . import fleet
from .base import WorkerConsumer
from .feed import Admission, FeedStore, Publication, ViewsChanged
from .publish import broadcast_encoded, deliver
from .system import SystemProbe

log = logging.getLogger(__name__)

STALE_TICK_NS = 1_000_000_000
ALIVE_EVERY_S = 1.0


def now_iso() -> str:
    return protocol.iso_utc(datetime.now(UTC))


def say_alive_forever(client: redis.Redis, instance: str) -> None:
    """Counts this process among the live status workers (``/readyz``, the system panel)."""
    while threading.main_thread().is_alive():
        try:
            heartbeats.mark_alive(client, keys.STATUS_WORKER_INSTANCES, instance)
        except redis.RedisError as error:
            log.warning("could not say this status worker is alive: %s", error)
        if _stop_saying_alive.wait(ALIVE_EVERY_S):
            return


_saying_alive: threading.Thread | None = None
_stop_saying_alive = threading.Event()


def start_saying_alive(client: redis.Redis, instance: str) -> None:
    """One thread per process, however many consumer instances (tests make several)."""
    global _saying_alive
    if _saying_alive is None or not _saying_alive.is_alive():
        _saying_alive = threading.Thread(target=say_alive_forever, args=(client, instance), daemon=True)
        _saying_alive.start()


def stop_saying_alive() -> None:
    """Stop the thread (tests: a worker run in the test process must not outlive its test's
    Redis, saying every second that it cannot reach it). A worker process never calls this."""
    if _saying_alive is not None:
        _stop_saying_alive.set()
        _saying_alive.join(timeout=2 * ALIVE_EVERY_S)
        _stop_saying_alive.clear()


class StatusWorker(WorkerConsumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.instance = heartbeats.instance_id()
        self.redis = redis_connections.sync_client(socket_timeout=2, socket_connect_timeout=1)
        self.feed = FeedStore(self.redis)
        self.reports = ReportReader(self.redis, self.instance)
        self.probe = SystemProbe()
        self.system = SystemProbe.unknown()
        # ((epoch, seq), the fleet's order then): kept from the update this worker stored last,
        # read from Redis again when another worker stored one since.
        self.index: tuple[tuple[str, int], FleetIndex] | None = None
        self._snapshot = self.redis.register_script(SNAPSHOT)
        start_saying_alive(self.redis, self.instance)
        self.started_ns = time.time_ns()

    # --- the clock ------------------------------------------------------------------

    def status_tick(self, message: dict[str, Any]) -> None:
        late_ns = time.time_ns() - message["tick_ns"]
        if late_ns > STALE_TICK_NS:
            # A backlog of ticks (worker stalled or restarted) must not burst out as updates.
            # One queued while this process was starting is routine, not a warning.
            routine = message["tick_ns"] < self.started_ns
            log.log(
                logging.INFO if routine else logging.WARNING, "dropped a tick %.0f ms late", late_ns / 1e6
            )
            return
        admission = self.feed.admit(message.get("token", -1), message["tick_ns"] // 1_000_000)
        if isinstance(admission, str):
            # "repeat" is routine in a handover; the others mean a deposed leader still ticks.
            log.log(
                logging.INFO if admission == "repeat" else logging.WARNING,
                "refused a tick with token %s: %s",
                message.get("token"),
                admission,
            )
            return
        if admission.unsent_text is not None:
            log.warning(
                "sending update %d, which a stopped worker stored but may not have sent", admission.seq
            )
            self.broadcast(admission.epoch, admission.seq, admission.unsent_text, admission.unsent_views)
        if not admission.published:
            self.seed(admission.epoch, admission.seq)
        self.advance(admission, message)

    def status_apply(self, message: dict[str, Any]) -> None:
        """Apply the reports queued so far, between ticks; the next update carries them.

        They are announced before and after the commit, as on a tick, so the next stored update
        carries their machines whichever worker stores it, and this worker dying at any line
        loses nothing (what it had not committed is claimed and applied again). So they are
        acknowledged once applied."""
        if time.time_ns() - message["at_ns"] > STALE_TICK_NS:  # a backlog of them is no use
            return
        entries = self.reports.read()
        if not entries:
            return
        now = timezone.now()
        self.change({entry.name for entry in entries}, lambda: fleet.apply_entries(entries, now))
        self.reports.done(entries)

    def change(self, names: set[str], make_change: Callable[[], object]) -> dict[str, int]:
        """Make ``make_change`` to the machines ``names`` in the database, announced as changing
        in the feed before it (a crash after the commit leaves them pending) and again after it
        (a worker handling a tick meanwhile may have carried the first version with the state
        from before the commit; the second outlives its store). Their versions after it."""
        self.feed.announce(names)
        make_change()
        return self.feed.announce(names)

    def advance(self, admission: Admission, tick: dict[str, Any]) -> None:
        entries = self.reports.read()
        now = timezone.now()
        cutoff = now - timedelta(seconds=settings.OFFLINE_AFTER)
        expiring = fleet.silent(cutoff)
        changing = {entry.name for entry in entries} | set(expiring)
        carried = self.feed.pending()

        def apply_and_expire() -> None:
            fleet.apply_entries(entries, now)
            fleet.expire(expiring, cutoff)

        carried.update(self.change(changing, apply_and_expire))

        tick_lag_ms = (tick.get("sent_ns", tick["tick_ns"]) - tick["tick_ns"]) / 1e6
        self.system = self.probe.sample(round(tick_lag_ms, 3))
        update = self.store_update(admission, tick, carried)
        if update is not None:
            # Sent before the reports are acknowledged, which the dashboards need not wait for:
            # a worker that dies in between has its reports claimed and skipped as repeated.
            self.broadcast(admission.epoch, *update)
        self.reports.done(entries)
        if update is None:
            log.warning(
                "another status worker stored update %d first; these changes go in the next",
                admission.seq + 1,
            )

    # --- the update: the whole fleet's and each view's ---------------------------------

    def store_update(
        self, admission: Admission, tick: dict[str, Any], carried: dict[str, int]
    ) -> tuple[int, str, dict[str, str]] | None:
        """Build update ``seq + 1`` from the ``carried`` changes and store it with what it
        publishes: ``(seq, text, each view's frame by group)``, or ``None`` if another worker
        stored one first."""
        published = [Published.of(machine) for machine in (fleet.machines(carried) if carried else [])]
        removed = sorted(set(carried) - {machine.name for machine in published})
        seq = admission.seq + 1
        head = {
            "type": protocol.STATUS_UPDATE,
            "epoch": admission.epoch,
            "seq": seq,
            "ts": now_iso(),
            "tick_ns": tick["tick_ns"],
        }
        summary, system = orjson.dumps(fleet.summary()), orjson.dumps(self.system)
        text = protocol.encode(
            {
                **head,
                "machines": [orjson.Fragment(machine.whole) for machine in published],
                "removed": removed,
                "summary": orjson.Fragment(summary),
                "system": orjson.Fragment(system),
            }
        )
        before = self.fleet_index(admission)
        after = before.after(published, removed)
        while True:
            views, version = self.feed.watched()
            frames = self.view_frames(head, views, before, after, published, summary, system)
            publication = Publication(published, removed, summary, system, frames, version)
            try:
                stored = self.feed.store(admission, text, carried, publication)
                break
            except ViewsChanged:
                log.info("a view was registered while update %d was built; building its views again", seq)
        if not stored:
            return None
        self.index = ((admission.epoch, seq), after)
        return seq, text, frames

    def view_frames(
        self,
        head: dict[str, Any],
        views: list[StatusView],
        before: FleetIndex,
        after: FleetIndex,
        published: list[Published],
        summary: bytes,
        system: bytes,
    ) -> dict[str, str]:
        """Each view's update, by group: the rows of its page that changed or came onto it, and
        the names that left it."""
        changed = {machine.name: machine.row for machine in published}
        changes = {view: view_change(view, before, after, changed.keys()) for view in views}
        entering = sorted(
            {name for change in changes.values() for name in change.shown if name not in changed}
        )
        rows = {**self.feed.rows(entering), **changed}
        return {
            view.group: protocol.encode(
                {
                    **head,
                    "view": view_header(view, change.total),
                    "rows": [orjson.Fragment(rows[name]) for name in change.shown],
                    "removed": change.left,
                    "summary": orjson.Fragment(summary),
                    "system": orjson.Fragment(system),
                }
            )
            for view, change in changes.items()
        }

    def fleet_index(self, admission: Admission) -> FleetIndex:
        if self.index is not None and self.index[0] == (admission.epoch, admission.seq):
            return self.index[1]
        return self.feed.index()

    def seed(self, epoch: str, seq: int) -> None:
        """Publish the whole fleet, as the database has it, as the fleet at ``seq``: when nothing
        was published in this epoch (Redis lost it, or nothing was yet) or an update was stored
        without it."""
        published = [Published.of(machine) for machine in fleet.machines()]
        if self.feed.seed(epoch, seq, published, orjson.dumps(fleet.summary()), orjson.dumps(self.system)):
            self.index = ((epoch, seq), FleetIndex({machine.name: machine.state for machine in published}))
            log.info("published the fleet (%d machines) as it stands at update %d", len(published), seq)

    def broadcast(self, epoch: str, seq: int, text: str, view_frames: dict[str, str]) -> None:
        """Send update ``seq`` to the whole fleet's group and to each view's. The channel message
        says which update it is (consumers/status.py drops one a snapshot already covers)."""
        messages = [(protocol.STATUS_GROUP, text), *view_frames.items()]
        broadcast_encoded(
            [
                (group, {"type": protocol.STATUS_UPDATE, "text": frame, "epoch": epoch, "seq": seq})
                for group, frame in messages
            ]
        )
        self.feed.mark_sent(seq)

    # --- the snapshot API -------------------------------------------------------------------

    def status_join(self, message: dict[str, Any]) -> None:
        """``/api/status``: the whole fleet's snapshot, as a socket gets it from its web process."""
        script_keys, args = snapshot_call(None)
        snapshot = snapshot_from(None, self._snapshot(keys=script_keys, args=args))
        if snapshot is None:  # nothing published yet in this epoch
            self.seed(*self.feed.current())
            snapshot = snapshot_from(None, self._snapshot(keys=script_keys, args=args))
        if snapshot is None:
            log.warning("no snapshot to serve: another status worker is publishing the fleet")
            return
        deliver(message["reply_channel"], {"type": protocol.STATUS_SNAPSHOT, "text": snapshot.text})

    status_resync = status_join

    def health_ping(self, message: dict[str, Any]) -> None:
        epoch, _ = self.feed.current()
        deliver(
            message["reply_channel"], {"type": protocol.HEALTH_PONG, "epoch": epoch, "worker": self.instance}
        )
