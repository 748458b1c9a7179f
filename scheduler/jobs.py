"""The scheduler's periodic jobs. Each runs on the boundaries of its own period, on the leader only."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol

from project import protocol

from .clock import NS_PER_S, Tick

if TYPE_CHECKING:
    from .service import Scheduler

log = logging.getLogger(__name__)


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


class ApplyReports:
    """Asks a status worker, half a second after each tick, to apply the reports queued so far.

    A tick's update waits for its worker to apply what was queued since the last one; with half
    of it applied already, the dashboards wait for the other half and the update only (at 5,000
    reports a second the whole took the worker 0.6–0.9 s, docs/performance.md). Not fenced:
    applying reports publishes nothing, and a report applied twice is skipped the second time.
    """

    name = "apply-reports"
    every_s = 1
    after_s = 0.5

    def __init__(self) -> None:
        self.pending: set[asyncio.Task] = set()  # held until sent (the loop keeps weak references)

    async def run(self, scheduler: Scheduler, tick: Tick, token: int) -> None:
        task = asyncio.get_running_loop().create_task(self.send_later(scheduler, tick))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def send_later(self, scheduler: Scheduler, tick: Tick) -> None:
        at_ns = tick.tick_ns + int(self.after_s * NS_PER_S)
        await asyncio.sleep(max(0.0, (at_ns - time.time_ns()) / NS_PER_S))
        if not scheduler.leads():  # the lease was lost meanwhile: the new leader asks
            return
        try:
            await scheduler.send(protocol.STATUS_WORKER, {"type": protocol.STATUS_APPLY, "at_ns": at_ns})
        except Exception:  # Redis briefly away: the tick applies them
            log.warning("could not ask a status worker to apply the queued reports", exc_info=True)


class ChatPositions:
    """Asks a chat worker to tell recently active rooms their newest offset, so that a client
    that missed a broadcast (stored, never delivered) notices within seconds and resumes."""

    name = "chat-positions"
    every_s = protocol.POSITION_EVERY_S

    async def run(self, scheduler: Scheduler, tick: Tick, token: int) -> None:
        await scheduler.send(protocol.CHAT_WORKER, {"type": protocol.CHAT_POSITIONS})


def default_jobs() -> list[Job]:
    # The tick goes first: it is the one whose timing clients see.
    return [StatusTick(), Heartbeat(), ApplyReports(), ChatPositions()]
