"""The scheduler's periodic jobs. Each runs on the boundaries of its own period."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

from .clock import Tick

if TYPE_CHECKING:
    from .service import Scheduler


class Job(Protocol):
    name: str
    every_s: int

    async def run(self, scheduler: "Scheduler", tick: Tick) -> None: ...


class Heartbeat:
    """Records that the clock is alive and how late its last tick fired."""

    name = "heartbeat"
    every_s = 1

    async def run(self, scheduler: "Scheduler", tick: Tick) -> None:
        lag_ms = (time.time_ns() - tick.tick_ns) / 1e6
        await scheduler.beat(tick_ns=tick.tick_ns, lag_ms=round(lag_ms, 3))


def default_jobs() -> list[Job]:
    return [Heartbeat()]
