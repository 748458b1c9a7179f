"""Group broadcasts fanned out inside the web process: one layer member per group, not one per socket.

Left to the core layer, a group message reaches each member socket through the socket's own
channel: per socket and per message, a wake-up of the consumer's ``receive`` (in
channels_redis two tasks, a wait and a lock), a new receive task and a dispatch. Under
fan-out that hop was the largest cost left in the web process (py-spy under S1,
docs/performance.md). Here each process joins a group once, under a channel of its own,
and hands every broadcast to each local socket's handler in one loop. Redis also sees one
group member per process instead of one per socket, so a socket's connect and disconnect
no longer touch Redis for the group.

A socket's own channel still carries what is addressed to it alone (snapshots, history,
errors); both kinds land in this process's one Redis key, in the order they were sent.

Each handler only queues the frame in its socket's outbox (consumers/outbox.py) and returns
at once, so the loop never waits on a client: under uvicorn a socket's send waits while its
client is not reading, and one stalled dashboard would otherwise hold up the whole process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from channels.consumer import get_handler_name

log = logging.getLogger(__name__)

# The core layer forgets a group member after ``group_expiry`` (1 day); a process whose
# sockets stay open longer (a dashboard on a wall) re-joins well before that.
GROUP_REFRESH_S = 3600


@dataclass(eq=False)
class LocalGroup:
    name: str
    channel: str = ""
    sockets: set = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None


class GroupFanout:
    """This process's members of channel-layer groups, for one event loop and layer."""

    def __init__(self, channel_layer, loop: asyncio.AbstractEventLoop) -> None:
        self.layer = channel_layer
        self.loop = loop
        self.groups: dict[str, LocalGroup] = {}

    async def join(self, name: str, consumer) -> None:
        """Returns once broadcasts to ``name`` reach ``consumer``."""
        while True:
            group = self.groups.get(name)
            if group is None:
                group = self.groups[name] = LocalGroup(name)
                group.channel = await self.layer.new_channel()
                await self.layer.group_add(name, group.channel)
                group.task = self.loop.create_task(self.relay_forever(group))
                group.ready.set()
            await group.ready.wait()
            if self.groups.get(name) is group:  # not emptied and dropped meanwhile
                group.sockets.add(consumer)
                return

    async def leave(self, name: str, consumer) -> None:
        group = self.groups.get(name)
        if group is None:
            return
        group.sockets.discard(consumer)
        if not group.sockets and group.ready.is_set():
            del self.groups[name]
            group.task.cancel()
            await self.layer.group_discard(name, group.channel)

    async def relay_forever(self, group: LocalGroup) -> None:
        joined_at = time.monotonic()
        while True:
            try:
                message = await self.layer.receive(group.channel)
            except Exception:  # Redis away: keep the sockets, try again
                log.exception("receiving broadcasts for %s failed; retrying in 1 s", group.name)
                await asyncio.sleep(1)
                continue
            handler_name = get_handler_name(message)
            for consumer in list(group.sockets):
                handler = getattr(consumer, handler_name, None)
                if handler is None:
                    log.warning("%s has no handler for %s", type(consumer).__name__, message["type"])
                    continue
                try:
                    await handler(message)
                except Exception:  # one socket's failure must not cut the others off
                    log.exception("relaying %s to a socket of %s failed", message["type"], group.name)
            if time.monotonic() - joined_at > GROUP_REFRESH_S:
                await self.layer.group_add(group.name, group.channel)
                joined_at = time.monotonic()


def fanout_for(channel_layer) -> GroupFanout:
    """The fan-out of the running event loop and this layer (tests run a loop and a layer per test)."""
    loop = asyncio.get_running_loop()
    fanout = getattr(channel_layer, "group_fanout", None)
    if fanout is None or fanout.loop is not loop:
        fanout = channel_layer.group_fanout = GroupFanout(channel_layer, loop)
    return fanout
