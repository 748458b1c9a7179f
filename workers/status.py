"""The status worker: applies agent reports and turns the scheduler's ticks into updates.

On each ``status.tick`` it builds, once, what changed since the previous tick and
``group_send``s one ``status.update`` to every status socket. Sockets that join or
resync get a ``status.snapshot``, built at most once per tick and shared by all.
Exactly one process should consume the ``status`` channel: the feed's sequence and
changed-set live in this process (a restart starts a new epoch and clients resync).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from project import protocol
from project.protocol import relay

from . import fleet
from .feed import StatusFeed
from .base import WorkerConsumer
from .publish import deliver, publish
from .system import SystemProbe

log = logging.getLogger(__name__)

STALE_TICK_NS = 1_000_000_000


def now_iso() -> str:
    return protocol.iso_utc(datetime.now(UTC))


class StatusWorker(WorkerConsumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.feed = StatusFeed()
        self.probe = SystemProbe(settings.REDIS_URL)
        self.system = SystemProbe.unknown()
        # The relayed snapshot for the current seq. It may miss reports applied after it was
        # built, but the next update carries every machine changed since the previous tick
        # whole, so a client that applies both is current. Rebuilding it on every report
        # instead made a wave of joins against a busy fleet (a snapshot of 200 machines per
        # join) fall so far behind that ticks went stale and were dropped (bench S1).
        self.snapshot: dict[str, Any] | None = None

    # --- the clock ------------------------------------------------------------------

    def status_tick(self, message: dict[str, Any]) -> None:
        late_ns = time.time_ns() - message["tick_ns"]
        if late_ns > STALE_TICK_NS:
            # A backlog of ticks (worker stalled or restarted) must not burst out as updates.
            log.warning("dropped tick %s, %.0f ms late", message.get("seq"), late_ns / 1e6)
            return
        if self.feed.follow(str(message.get("epoch", "0"))):
            log.info("status feed starts epoch %s", self.feed.epoch)
        step = self.feed.advance()
        tick_lag_ms = (message.get("sent_ns", message["tick_ns"]) - message["tick_ns"]) / 1e6
        self.system = self.probe.sample(round(tick_lag_ms, 3))
        self.snapshot = None
        publish(
            protocol.STATUS_GROUP,
            {
                "type": protocol.STATUS_UPDATE,
                "epoch": self.feed.epoch,
                "seq": step.seq,
                "ts": now_iso(),
                "tick_ns": message["tick_ns"],
                "machines": fleet.machines(step.changed) if step.changed else [],
                "removed": step.removed,
                "summary": fleet.summary(),
                "system": self.system,
            },
        )

    # --- sockets and the snapshot API ---------------------------------------------------

    def status_join(self, message: dict[str, Any]) -> None:
        if self.snapshot is None:
            self.snapshot = relay(self.snapshot_frame())
        deliver(message["reply_channel"], self.snapshot)

    status_resync = status_join

    def snapshot_frame(self) -> dict[str, Any]:
        return {
            "type": protocol.STATUS_SNAPSHOT,
            "epoch": self.feed.epoch,
            "seq": self.feed.seq,
            "ts": now_iso(),
            "machines": fleet.machines(),
            "summary": fleet.summary(),
            "system": self.system,
        }

    def health_ping(self, message: dict[str, Any]) -> None:
        deliver(message["reply_channel"], {"type": protocol.HEALTH_PONG, "epoch": self.feed.epoch})

    # --- the fleet ------------------------------------------------------------------------

    def fleet_report(self, message: dict[str, Any]) -> None:
        fleet.apply_report(message["name"], message["report"], timezone.now())
        self.changed([message["name"]])

    def fleet_remove(self, message: dict[str, Any]) -> None:
        if fleet.remove(message["name"]):
            self.feed.mark_removed(message["name"])

    def fleet_expire(self, message: dict[str, Any]) -> None:
        names = fleet.expire_silent(timezone.now(), settings.OFFLINE_AFTER)
        if names:
            log.info("marked %d silent machine(s) offline", len(names))
            self.changed(names)

    def changed(self, names: list[str]) -> None:
        self.feed.mark_changed(names)
