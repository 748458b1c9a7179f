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
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from project import metrics

# What a queued frame may ask for once it has been written to the socket.
AfterWrite = Callable[[], Awaitable[None]]

log = logging.getLogger(__name__)


class Outbox:
    def __init__(
        self,
        write: Callable[[str], Awaitable[None]],
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
        self.waiting.append((text, then))
        self.waiting_bytes += len(text)
        self.wakeup.set()
        if len(self.waiting) > self.max_frames or (
            self.waiting_bytes > self.max_bytes and len(self.waiting) > 1
        ):
            self.on_overflow(self)

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
        return self.clear()

    async def write_forever(self) -> None:
        while True:
            if not self.waiting:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            text, then = self.waiting.popleft()
            self.waiting_bytes -= len(text)
            try:
                await self.write(text)
            except Exception as error:  # the client is gone; its disconnect cleans up
                log.debug("writing to a socket failed (%r); its outbox stops", error)
                self.shut_down()
                return
            self.delivered.inc()
            if then is not None:
                await then()
