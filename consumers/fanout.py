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
import contextlib
import logging
from dataclasses import dataclass, field

from channels.consumer import get_handler_name

from project import orphans

log = logging.getLogger(__name__)

# Redis forgets every membership when it restarts empty or fails over to a replica that had
# not caught up, and the core layer forgets a member after ``group_expiry`` (1 day). So a
# process re-adds all its groups after any error it sees from the layer (the first thing a
# Redis restart causes) and, as a backstop, every GROUP_REFRESH_S.
GROUP_REFRESH_S = 30
RETRY_MAX_S = 2.0


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
        self.rejoin_now = asyncio.Event()
        self.stale: list[tuple[str, str]] = []  # (group, channel) left while Redis was away
        self.keeper: asyncio.Task | None = None

    async def join(self, name: str, consumer) -> None:
        """Returns once broadcasts to ``name`` reach ``consumer``; raises if the layer is away
        (the socket is refused and its client retries), never waits for ever."""
        while True:
            group = self.groups.get(name)
            if group is None:
                group = self.groups[name] = LocalGroup(name)
                try:
                    group.channel = await self.layer.new_channel()
                    await self.layer.group_add(name, group.channel)
                except BaseException:
                    # Others waiting on this group try for themselves.
                    del self.groups[name]
                    group.ready.set()
                    raise
                group.task = self.loop.create_task(self.relay_forever(group))
                group.ready.set()
                self.keep_memberships()
            await group.ready.wait()
            if self.groups.get(name) is group:  # not emptied, dropped or failed meanwhile
                group.sockets.add(consumer)
                return

    async def leave(self, name: str, consumer) -> None:
        group = self.groups.get(name)
        if group is None:
            return
        group.sockets.discard(consumer)
        if not group.sockets and group.ready.is_set():
            del self.groups[name]
            if group.task is not None:
                group.task.cancel()
            orphans.forget(self.layer, group.channel)  # a broadcast already on its way
            try:
                await self.layer.group_discard(name, group.channel)
            except Exception as error:  # Redis away: left again once it answers
                log.warning("leaving %s failed: %s", name, error)
                self.stale.append((name, group.channel))
                self.keep_memberships()

    def layer_failed(self) -> None:
        """Someone in this process saw the layer fail: Redis may have forgotten our memberships."""
        self.rejoin_now.set()

    def keep_memberships(self) -> None:
        if self.keeper is None or self.keeper.done():
            self.keeper = self.loop.create_task(self.rejoin_forever())

    async def rejoin_forever(self) -> None:
        """Re-add every group this process is in, after a layer error and every GROUP_REFRESH_S;
        leave for good the groups whose leaving failed (their broadcasts would queue up unread)."""
        failures = 0
        while self.groups or self.stale:
            if not failures:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.rejoin_now.wait(), GROUP_REFRESH_S)
            self.rejoin_now.clear()
            try:
                for group in list(self.groups.values()):
                    if group.task is not None:
                        await self.layer.group_add(group.name, group.channel)
                while self.stale:
                    await self.layer.group_discard(*self.stale[-1])
                    self.stale.pop()
            except Exception as error:
                failures += 1
                log.warning("re-joining %d group(s) failed (%s); retrying", len(self.groups), error)
                await asyncio.sleep(min(RETRY_MAX_S, 0.1 * 2**failures))
                continue
            if failures:
                log.info("re-joined %d group(s) after the channel layer came back", len(self.groups))
            failures = 0

    async def relay_forever(self, group: LocalGroup) -> None:
        failures = 0
        while True:
            try:
                message = await self.layer.receive(group.channel)
            except Exception as error:  # Redis away: keep the sockets, re-join, try again
                failures += 1
                log.warning("receiving broadcasts for %s failed (%s); retrying", group.name, error)
                self.layer_failed()
                await asyncio.sleep(min(RETRY_MAX_S, 0.1 * 2**failures))
                continue
            failures = 0
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


def fanout_for(channel_layer) -> GroupFanout:
    """The fan-out of the running event loop and this layer (tests run a loop and a layer per test)."""
    loop = asyncio.get_running_loop()
    fanout = getattr(channel_layer, "group_fanout", None)
    if fanout is None or fanout.loop is not loop:
        fanout = channel_layer.group_fanout = GroupFanout(channel_layer, loop)
    return fanout
