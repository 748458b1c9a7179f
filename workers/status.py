"""The status worker: turns each admitted tick into one ``status.update``; serves snapshots.

Any number of these may run (``runworker status`` in several processes, on several hosts)
and any may die at any line: the feed's epoch, sequence and pending changes live in Redis
(``workers/feed.py``), the reports answered ``202`` in a Redis stream
(``project/reportqueue.py``). On each tick, the worker that receives it:

1. has the feed admit the tick (only from the lease holder, never stale, never twice);
2. sends the previous update first if its worker died before sending it;
3. reads the queued reports, announces the machines it will change, applies the reports and
   expires silent machines in the database;
4. builds the update from every pending change and stores it as ``seq + 1`` (if another
   worker stored one first, its changes simply stay pending for the next);
5. acknowledges the reports and broadcasts the update once.

Sockets that join or resync get a ``status.snapshot`` built at most once per stored update.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.utils import timezone

from project import heartbeats, keys, protocol, redis_connections
from project.protocol import relay
from project.reportqueue import ReportReader

from . import fleet
from .base import WorkerConsumer
from .feed import Admission, FeedStore
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
        time.sleep(ALIVE_EVERY_S)


_saying_alive: threading.Thread | None = None


def start_saying_alive(client: redis.Redis, instance: str) -> None:
    """One thread per process, however many consumer instances (tests make several)."""
    global _saying_alive
    if _saying_alive is None or not _saying_alive.is_alive():
        _saying_alive = threading.Thread(target=say_alive_forever, args=(client, instance), daemon=True)
        _saying_alive.start()


class StatusWorker(WorkerConsumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.instance = heartbeats.instance_id()
        self.redis = redis_connections.sync_client(socket_timeout=2, socket_connect_timeout=1)
        self.feed = FeedStore(self.redis)
        self.reports = ReportReader(self.redis, self.instance)
        self.probe = SystemProbe()
        self.system = SystemProbe.unknown()
        # ((epoch, seq), relayed snapshot): one build per stored update, shared by every join.
        # It may miss changes applied after that update; the next update carries them.
        self.snapshot: tuple[tuple[str, int], dict[str, Any]] | None = None
        start_saying_alive(self.redis, self.instance)
        self.started_ns = time.time_ns()

    # --- the clock ------------------------------------------------------------------

    def status_tick(self, message: dict[str, Any]) -> None:
        late_ns = time.time_ns() - message["tick_ns"]
        if late_ns > STALE_TICK_NS:
            # A backlog of ticks (worker stalled or restarted) must not burst out as updates.
            # One queued while this process was starting is routine, not a warning.
            routine = message["tick_ns"] < self.started_ns
            log.log(logging.INFO if routine else logging.WARNING, "dropped a tick %.0f ms late", late_ns / 1e6)
            return
        admission = self.feed.admit(message.get("token", -1), message["tick_ns"] // 1_000_000)
        if isinstance(admission, str):
            # "repeat" is routine in a handover; the others mean a deposed leader still ticks.
            log.log(logging.INFO if admission == "repeat" else logging.WARNING,
                    "refused a tick with token %s: %s", message.get("token"), admission)
            return
        if admission.unsent_text is not None:
            log.warning("sending update %d, which a stopped worker stored but may not have sent", admission.seq)
            self.broadcast(admission.seq, admission.unsent_text)
        self.advance(admission, message)

    def advance(self, admission: Admission, tick: dict[str, Any]) -> None:
        entries = self.reports.read()
        now = timezone.now()
        cutoff = now - timedelta(seconds=settings.OFFLINE_AFTER)
        expiring = fleet.silent(cutoff)
        changing = {entry.name for entry in entries} | set(expiring)
        carried = self.feed.pending()
        # Announced before the change (a crash after the commit leaves it pending) and again
        # after it: a worker handling another tick at the same time may have carried the first
        # version with the state from before the commit; the second version outlives its store.
        self.feed.announce(changing)
        fleet.apply_entries(entries, now)
        fleet.expire(expiring, cutoff)
        carried.update(self.feed.announce(changing))

        machines = fleet.machines(carried) if carried else []
        removed = sorted(set(carried) - {machine["name"] for machine in machines})
        tick_lag_ms = (tick.get("sent_ns", tick["tick_ns"]) - tick["tick_ns"]) / 1e6
        self.system = self.probe.sample(round(tick_lag_ms, 3))
        seq = admission.seq + 1
        text = protocol.encode(
            {
                "type": protocol.STATUS_UPDATE,
                "epoch": admission.epoch,
                "seq": seq,
                "ts": now_iso(),
                "tick_ns": tick["tick_ns"],
                "machines": machines,
                "removed": removed,
                "summary": fleet.summary(),
                "system": self.system,
            }
        )
        stored = self.feed.store(admission, text, carried)
        self.reports.done(entries)
        if not stored:
            log.warning("another status worker stored update %d first; these changes go in the next", seq)
            return
        self.broadcast(seq, text)

    def broadcast(self, seq: int, text: str) -> None:
        broadcast_encoded(protocol.STATUS_GROUP, protocol.STATUS_UPDATE, text)
        self.feed.mark_sent(seq)

    # --- sockets and the snapshot API ---------------------------------------------------

    def status_join(self, message: dict[str, Any]) -> None:
        position = self.feed.current()
        if self.snapshot is None or self.snapshot[0] != position:
            self.snapshot = (position, relay(self.snapshot_frame(*position)))
        deliver(message["reply_channel"], self.snapshot[1])

    status_resync = status_join

    def snapshot_frame(self, epoch: str, seq: int) -> dict[str, Any]:
        return {
            "type": protocol.STATUS_SNAPSHOT,
            "epoch": epoch,
            "seq": seq,
            "ts": now_iso(),
            "machines": fleet.machines(),
            "summary": fleet.summary(),
            "system": self.system,
        }

    def health_ping(self, message: dict[str, Any]) -> None:
        epoch, _ = self.feed.current()
        deliver(message["reply_channel"], {"type": protocol.HEALTH_PONG, "epoch": epoch, "worker": self.instance})
