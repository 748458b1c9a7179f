"""The scheduler's periodic jobs. Each runs on the boundaries of its own period, on the leader only."""

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

    async def run(self, scheduler: Scheduler, tick: Tick, token: int) -> None: ...


class Heartbeat:
    """Records that the clock is alive, who leads it and how late its last tick fired."""

    name = "heartbeat"
    every_s = 1

    async def run(self, scheduler: Scheduler, tick: Tick, token: int) -> None:
        lag_ms = (time.time_ns() - tick.tick_ns) / 1e6
        await scheduler.beat(
            tick_ns=tick.tick_ns, lag_ms=round(lag_ms, 3), leader=scheduler.instance, token=token
        )


class StatusTick:
    """The one clock of the status stream: a status worker turns each tick into an update.

    The tick carries the lease's fencing token: the feed refuses it if a newer leader exists.
    """

    name = "status-tick"
    every_s = 1

    async def run(self, scheduler: Scheduler, tick: Tick, token: int) -> None:
        await scheduler.send(
            protocol.STATUS_WORKER,
            {
                "type": protocol.STATUS_TICK,
                "tick_ns": tick.tick_ns,
                "token": token,
                "sent_ns": time.time_ns(),
            },
        )


class ChatPositions:
    """Asks a chat worker to tell recently active rooms their newest offset, so that a client
    that missed a broadcast (stored, never delivered) notices within seconds and resumes."""

    name = "chat-positions"
    every_s = protocol.POSITION_EVERY_S

    async def run(self, scheduler: Scheduler, tick: Tick, token: int) -> None:
        await scheduler.send(protocol.CHAT_WORKER, {"type": protocol.CHAT_POSITIONS})


def default_jobs() -> list[Job]:
    # The tick goes first: it is the one whose timing clients see.
    return [StatusTick(), Heartbeat(), ChatPositions()]
