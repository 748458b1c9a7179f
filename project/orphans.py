"""Replies to sockets that are gone: dropped on arrival, not kept for the life of the process.

channels_redis reads every socket channel of a web process from one Redis key and sorts what
it reads into ``layer.receive_buffer[channel]``, a defaultdict of queues. A reply that arrives
after its socket closed (the join's history page for a client that left at once, the answer to
a frame sent just before leaving) gets a fresh queue there that nobody will ever read: about
85 KB per join-and-leave on a room with a full history page, for ever. The layer has no way to
forget a channel; upstream this is open as channels_redis issue 384
(https://github.com/django/channels_redis/issues/384) and channels issue 1361
(https://github.com/django/channels/issues/1361).

So when a socket's consumer ends, :func:`forget` puts a queue that holds nothing in the
channel's place in that buffer: the layer's late ``put_nowait`` for it is dropped, and nothing
else ever touches the entry (channel names are never reused, and the consumer no longer
receives). The entry stays as long as a reply can still be on its way: the request may wait
the layer's message expiry in the worker's channel, the reply as long again in ours, plus
``REPLY_MARGIN_S`` for the worker. A sweeper, one per event loop and layer and running only
while there are such entries, then removes them; meanwhile each costs a dict slot and a
channel name.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 5
# Beyond twice the layer's expiry: a worker's time on the request.
REPLY_MARGIN_S = 30


class Discard(asyncio.Queue):
    """A receive-buffer entry for a closed channel: whatever the layer puts in it is dropped."""

    def put_nowait(self, item: Any) -> None:
        pass


DISCARD = Discard()


class OrphanSweeper:
    """The closed channels of one layer's receive buffer, for one event loop."""

    def __init__(self, channel_layer, loop: asyncio.AbstractEventLoop) -> None:
        self.buffer: dict[str, asyncio.Queue] = channel_layer.receive_buffer
        self.loop = loop
        self.window_s = 2 * channel_layer.expiry + REPLY_MARGIN_S
        self.closed: deque[tuple[float, str]] = deque()  # (when no reply can arrive any more, channel)
        self.sweeper: asyncio.Task | None = None

    def forget(self, channel: str) -> None:
        dropped = self.buffer.get(channel)
        if dropped is not None and not dropped.empty():
            log.debug("dropping %d message(s) for a closed socket", dropped.qsize())
        self.buffer[channel] = DISCARD
        self.closed.append((self.loop.time() + self.window_s, channel))
        if self.sweeper is None or self.sweeper.done():
            self.sweeper = self.loop.create_task(self.sweep_forever())

    async def sweep_forever(self) -> None:
        while self.closed:
            await asyncio.sleep(SWEEP_EVERY_S)
            self.sweep(self.loop.time())

    def sweep(self, now: float) -> None:
        """Remove the entries of channels that no reply can reach any more."""
        while self.closed and self.closed[0][0] <= now:
            _, channel = self.closed.popleft()
            if self.buffer.get(channel) is DISCARD:
                del self.buffer[channel]


def forget(channel_layer, channel: str) -> None:
    """``channel``'s consumer has ended: drop what waits for it and whatever arrives later.

    A no-op for layers without a per-channel receive buffer (the in-memory layer of unit tests,
    the pub/sub layer)."""
    if not isinstance(getattr(channel_layer, "receive_buffer", None), dict):
        return
    loop = asyncio.get_running_loop()
    sweeper = getattr(channel_layer, "orphan_sweeper", None)
    if sweeper is None or sweeper.loop is not loop:
        sweeper = channel_layer.orphan_sweeper = OrphanSweeper(channel_layer, loop)
    sweeper.forget(channel)
