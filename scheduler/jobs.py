"""The scheduler's periodic jobs. Each runs on the boundaries of its own period."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

from project import protocol

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
        await scheduler.beat(tick_ns=tick.tick_ns, lag_ms=round(lag_ms, 3), epoch=scheduler.epoch)


class StatusTick:
    """The one clock of the status stream: the status worker turns each tick into an update."""

    name = "status-tick"
    every_s = 1

    def __init__(self) -> None:
        self.seq = 0

    async def run(self, scheduler: "Scheduler", tick: Tick) -> None:
        self.seq += 1
        await scheduler.send(
            protocol.STATUS_WORKER,
            {
                "type": protocol.STATUS_TICK,
                "seq": self.seq,
                "tick_ns": tick.tick_ns,
                "epoch": scheduler.epoch,
                "sent_ns": time.time_ns(),
            },
        )


class ExpireSilentMachines:
    """Asks the status worker to mark machines that stopped reporting offline."""

    name = "expire-silent-machines"
    every_s = 1

    async def run(self, scheduler: "Scheduler", tick: Tick) -> None:
        await scheduler.send(protocol.STATUS_WORKER, {"type": protocol.FLEET_EXPIRE})


def default_jobs() -> list[Job]:
    # The tick goes first: it is the one whose timing clients see.
    return [StatusTick(), ExpireSilentMachines(), Heartbeat()]
