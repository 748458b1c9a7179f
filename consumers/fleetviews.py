"""What this process's status sockets show: their views, registered for the worker, and their
snapshots, read from the fleet the status worker published in Redis (project/statusviews.py).

A socket's snapshot never goes through the status worker, so a wave of joins costs the stream
nothing: the worker keeps ticking while web processes read Redis. Reads are shared: a socket
first reads the feed's position (epoch, seq) and takes the snapshot this process already read
at that position or later, or the read of one already under way from that position, or starts
one. That is sound because the socket joined its group before it read the position: every
update after a snapshot taken at or after that position reaches it.

A view is registered (``REGISTER``) before its snapshot is read, and again every
``VIEW_REFRESH_S`` while any socket of this process shows it; the worker sends each update
to every registered view (workers/feed.py explains why none can be missed in between).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any, cast

import redis.asyncio as redis

from project import keys, redis_connections
from project.protocol import StatusView
from project.statusviews import (
    REGISTER,
    SNAPSHOT,
    VIEW_REFRESH_S,
    VIEW_TTL_MS,
    Snapshot,
    TooManyViews,
    register_call,
    snapshot_call,
    snapshot_from,
)

log = logging.getLogger(__name__)

# A view registered this recently is still in the registry: it is dropped only VIEW_TTL_MS after
# its last registration, and this process renews it every VIEW_REFRESH_S.
REGISTERED_FOR_S = VIEW_TTL_MS / 1000 / 2
# How long to wait before asking again when there is no snapshot to read yet (no status worker
# has published this epoch's fleet) or Redis did not answer.
RETRY_S = 0.25

Position = tuple[str, int]


class FleetViews:
    """This process's views and snapshots, for one event loop (tests run a loop per test)."""

    def __init__(self) -> None:
        self.client: redis.Redis | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.scripts: dict[str, Any] = {}  # Lua source -> the client's script object
        self.shown: Counter[StatusView] = Counter()
        self.registered_at: dict[StatusView, float] = {}
        self.snapshots: dict[StatusView | None, Snapshot] = {}
        self.reads: dict[tuple[StatusView | None, Position], asyncio.Task] = {}
        self.refresher: asyncio.Task | None = None

    def redis(self) -> redis.Redis:
        loop = asyncio.get_running_loop()
        if self.client is None or self.loop is not loop:
            self.client = redis_connections.async_client(socket_timeout=2, socket_connect_timeout=1)
            self.loop = loop
            self.scripts = {source: self.client.register_script(source) for source in (REGISTER, SNAPSHOT)}
            self.registered_at.clear()
            self.snapshots.clear()
            self.reads.clear()
        return self.client

    def script(self, source: str):
        """The Lua script ``source``, registered with this loop's client."""
        self.redis()
        return self.scripts[source]

    # --- views -----------------------------------------------------------------------------

    def show(self, view: StatusView) -> None:
        """A socket of this process shows ``view`` from now on."""
        self.shown[view] += 1
        if self.refresher is None or self.refresher.done():
            self.refresher = asyncio.get_running_loop().create_task(self.refresh_forever())

    def hide(self, view: StatusView) -> None:
        self.shown[view] -= 1
        if self.shown[view] <= 0:
            del self.shown[view]
            self.snapshots.pop(view, None)

    async def register(self, views: list[StatusView]) -> None:
        script_keys, args = register_call(views)
        now = time.monotonic()
        answer = await self.script(REGISTER)(keys=script_keys, args=args)
        self.registered_at.update(dict.fromkeys(views, now))
        if answer < 0:
            for view in views:  # which of them were refused is not said: ask again next time
                self.registered_at.pop(view, None)
            raise TooManyViews()

    async def refresh_forever(self) -> None:
        while self.shown:
            await asyncio.sleep(VIEW_REFRESH_S)
            try:
                await self.register(list(self.shown))
            except (redis.RedisError, TooManyViews) as error:
                log.warning("could not renew %d view(s) in the registry (%r)", len(self.shown), error)

    # --- snapshots -----------------------------------------------------------------------------

    async def snapshot(self, view: StatusView | None) -> Snapshot:
        """``view``'s snapshot (``None``: the whole fleet) at the feed's position now or later.

        The caller has joined the view's group. Waits while there is nothing to read yet or
        Redis does not answer (the caller's task is cancelled if its socket closes); raises
        :class:`TooManyViews` if the view cannot be registered."""
        while True:
            try:
                snapshot = await self.try_snapshot(view)
            except redis.RedisError as error:
                log.warning("could not read a status snapshot (%s); trying again", error)
                snapshot = None
            if snapshot is not None:
                return snapshot
            await asyncio.sleep(RETRY_S)

    async def try_snapshot(self, view: StatusView | None) -> Snapshot | None:
        if (
            view is not None
            and time.monotonic() - self.registered_at.get(view, -REGISTERED_FOR_S) >= REGISTERED_FOR_S
        ):
            await self.register([view])
        epoch, seq, published = cast(
            list[bytes | None], await self.redis().hmget(keys.STATUS_FEED, "epoch", "seq", "published")
        )
        if epoch is None or seq is None or published != epoch + b" " + seq:
            return None
        position = (epoch.decode(), int(seq))
        known = self.snapshots.get(view)
        if known is not None and known.epoch == position[0] and known.seq >= position[1]:
            return known
        read = self.reads.get((view, position))
        if read is None:
            read = self.reads[(view, position)] = asyncio.get_running_loop().create_task(
                self.read(view, position)
            )
        return await asyncio.shield(read)

    async def read(self, view: StatusView | None, position: Position) -> Snapshot | None:
        try:
            script_keys, args = snapshot_call(view)
            snapshot = snapshot_from(view, await self.script(SNAPSHOT)(keys=script_keys, args=args))
        finally:
            self.reads.pop((view, position), None)
        if snapshot is not None and (view is None or view in self.shown):
            known = self.snapshots.get(view)
            if known is None or known.epoch != snapshot.epoch or known.seq < snapshot.seq:
                self.snapshots[view] = snapshot
        return snapshot


fleet_views = FleetViews()
