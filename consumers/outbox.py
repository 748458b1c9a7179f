"""Each socket's outgoing frames: a bounded queue, written in order by one task per socket.

Why a queue of our own: under uvicorn an ASGI ``send`` waits while the client is not reading
(once the transport holds 64 KiB it has not written). Awaited from the process's fan-out loop,
one stalled dashboard would hold up every other socket of the process; awaited nowhere (daphne
never waits), a stalled client's frames pile up in the server without bound. So every frame
for a socket is appended here, without waiting, and the socket's own task writes them.

The bound: when more than ``max_frames`` frames or ``max_bytes`` bytes of text wait, the
queue calls ``on_overflow`` once per crossing; the consumer decides what a slow client of its
kind gets (status: skip to the newest and resync; chat: closed, then resumes). See
docs/protocol.md, "Slow clients". One frame alone is never over the bound, whatever its
size: it is not a backlog (a whole-fleet snapshot of 10,000 machines is 2.5 MB), and treating
it as one would drop it, ask for it again and drop it again.

Most frames never wait: a socket's client reads, its outbox is empty, and the server's
``send`` returns without suspending (uvicorn's waits only while the transport is paused).
Such a frame is written at once, in the step that puts it, rather than by waking the writer
task: a wake-up per socket per frame was 13 % of the web's samples at 5,000 dashboards
(docs/performance.md). Should that write turn out to wait after all, the writer task finishes
it and writes what comes after it, so the order holds either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from project import metrics

# What a queued frame may ask for once it has been written to the socket.
AfterWrite = Callable[[], Awaitable[None]]

log = logging.getLogger(__name__)


class Resumed:
    """Awaits the rest of a coroutine that was started by hand and stopped at ``waits_for``
    (what its first step yielded): a ``yield from`` written out, what Python 3.12's eager
    tasks do when a coroutine started eagerly suspends."""

    def __init__(self, step: Coroutine[Any, Any, Any], waits_for: Any) -> None:
        self.step, self.waits_for = step, waits_for

    def __await__(self):
        step, waits_for = self.step, self.waits_for
        while True:
            try:
                sent = yield waits_for
            except GeneratorExit:
                step.close()
                raise
            except BaseException as error:  # cancelled, say: it is raised where the step waits
                try:
                    waits_for = step.throw(error)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    waits_for = step.send(sent)
                except StopIteration as done:
                    return done.value


class Outbox:
    def __init__(
        self,
        write: Callable[[str], Coroutine[Any, Any, None]],
        on_overflow: Callable[[Outbox], None],
        max_frames: int,
        max_bytes: int,
        kind: str = "other",
    ) -> None:
        self.write = write
        self.on_overflow = on_overflow
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.waiting: deque[tuple[str, AfterWrite | None]] = deque()  # (encoded frame, then), oldest first
        self.waiting_bytes = 0
        self.wakeup = asyncio.Event()
        self.writer: asyncio.Task | None = None
        # The writer waits for frames (none waits, none is being written): one put now can be
        # written at once.
        self.idle = False
        # A write begun at once that would have waited, for the writer to finish: (the write's
        # coroutine, what it waits for).
        self.in_flight: tuple[Coroutine[Any, Any, None], Any] | None = None
        self.shut = False
        # Bound once per socket; a frame written costs an add to an int (metrics.Tally).
        self.delivered, self.dropped = (
            metrics.frames_delivered_tally(kind),
            metrics.frames_dropped.labels(kind),
        )

    def start(self) -> None:
        """Start writing; frames put before this (say, between joining and accepting) wait."""
        self.writer = asyncio.get_running_loop().create_task(self.write_forever())

    def put(self, text: str, then: AfterWrite | None = None) -> None:
        """Queue an encoded frame; never waits. Over the bound, ``on_overflow`` runs before this returns.

        ``then`` is awaited once the frame has reached the socket (not if it is dropped).
        """
        if self.shut:
            return
        if self.idle and then is None and not self.waiting and self.in_flight is None:
            self.write_now(text)
            return
        self.waiting.append((text, then))
        self.waiting_bytes += len(text)
        self.wakeup.set()
        if len(self.waiting) > self.max_frames or (
            self.waiting_bytes > self.max_bytes and len(self.waiting) > 1
        ):
            self.on_overflow(self)

    def write_now(self, text: str) -> None:
        """Write ``text`` in this step, as far as the write goes without waiting; the writer
        finishes a write that would wait (the client is not reading)."""
        step = self.write(text)
        try:
            waits_for = step.send(None)
        except StopIteration:
            self.delivered.inc()
            return
        except Exception as error:
            self.write_failed(error)
            return
        self.idle = False
        self.in_flight = (step, waits_for)
        self.wakeup.set()

    def write_failed(self, error: Exception) -> None:
        """The client is gone; its disconnect cleans up, and nothing more is written."""
        log.debug("writing to a socket failed (%r); its outbox stops", error)
        self.shut_down()

    def clear(self) -> int:
        """Drop every waiting frame; returns how many were dropped."""
        dropped = len(self.waiting)
        self.dropped.inc(dropped)
        self.waiting.clear()
        self.waiting_bytes = 0
        return dropped

    def shut_down(self) -> int:
        """Stop writing and drop what waits (the socket is closing); returns how many were dropped."""
        self.shut = True
        if self.writer is not None and self.writer is not asyncio.current_task():
            self.writer.cancel()
        if self.in_flight is not None:  # begun at once, never taken up by the writer
            self.in_flight[0].close()
            self.in_flight = None
        return self.clear()

    async def write_forever(self) -> None:
        while True:
            if self.in_flight is not None:
                step, waits_for = self.in_flight
                self.in_flight = None
                write: Awaitable[None] = Resumed(step, waits_for)
                then = None
            elif not self.waiting:
                self.wakeup.clear()
                self.idle = True
                try:
                    await self.wakeup.wait()
                finally:
                    self.idle = False
                continue
            else:
                text, then = self.waiting.popleft()
                self.waiting_bytes -= len(text)
                write = self.write(text)
            try:
                await write
            except Exception as error:
                self.write_failed(error)
                return
            self.delivered.inc()
            if then is not None:
                await then()
