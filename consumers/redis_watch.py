"""Whether this web process can reach Redis; when it cannot, its sockets are told at once.

A web process cut off from Redis by a partition or a firewall that drops packets gets no error:
its reads and writes just wait. Its sockets stay open and hear nothing (no messages, no status
updates) while the other hosts' carry on, and their clients cannot know that reconnecting
(through the front, to a healthy host) would help. So each web process asks Redis for a PING
every ``PING_EVERY_S`` while it holds sockets. After ``REDIS_LOST_AFTER_S`` without an answer:

- every socket is closed with 1011 (``server_unavailable``): clients reconnect with backoff and
  resume (chat, from their offset) or start from a fresh snapshot (status), so nothing is lost;
- handshakes are refused (before accept) until Redis answers again, without waiting on it;
- when it answers, the process re-adds its group memberships (consumers/fanout.py) and takes
  sockets again.

A Redis restart (refused connections for a second or two) stays below the bound: sockets stay
open and the processes reconnect by themselves (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as redis
from channels.layers import get_channel_layer
from django.conf import settings

from project import protocol, redis_connections

from .fanout import fanout_for

log = logging.getLogger(__name__)

PING_EVERY_S = 1.0
CONNECT_TIMEOUT_S = 1.0


class RedisWatch:
    """This process's open sockets, and whether Redis answers it."""

    def __init__(self) -> None:
        self.sockets: set = set()
        self.lost = False
        self.watcher: asyncio.Task | None = None
        self.watcher_loop: asyncio.AbstractEventLoop | None = None

    def follow(self, consumer) -> None:
        """Close ``consumer`` (``consumer.close_soon(...)``) if this process loses Redis."""
        self.sockets.add(consumer)
        # One watcher per event loop (a web process has one; tests run a loop per test).
        loop = asyncio.get_running_loop()
        if self.watcher is None or self.watcher.done() or self.watcher_loop is not loop:
            self.watcher = loop.create_task(self.watch())
            self.watcher_loop = loop

    def unfollow(self, consumer) -> None:
        self.sockets.discard(consumer)

    async def watch(self) -> None:
        """Ping while there are sockets to tell, and until a lost Redis answers again."""
        # Its own client: the channel layer's connections may be the ones that hang.
        client = redis_connections.async_client(
            socket_timeout=settings.REDIS_LOST_AFTER_S, socket_connect_timeout=CONNECT_TIMEOUT_S
        )
        loop = asyncio.get_running_loop()
        answered_at = loop.time()
        try:
            while self.sockets or self.lost:
                try:
                    await client.ping()
                    answered_at = loop.time()
                    if self.lost:
                        self.found()
                except (redis.RedisError, OSError) as error:
                    silent_s = loop.time() - answered_at
                    if not self.lost and silent_s >= settings.REDIS_LOST_AFTER_S:
                        self.lose(silent_s, error)
                await asyncio.sleep(PING_EVERY_S)
        finally:
            await client.aclose()

    def lose(self, silent_s: float, error: Exception) -> None:
        self.lost = True
        log.warning(
            "Redis has not answered for %.1f s (%s): closing %d socket(s) with %d and refusing new ones until it does",
            silent_s,
            error,
            len(self.sockets),
            protocol.CLOSE_TRY_AGAIN,
        )
        for consumer in list(self.sockets):
            consumer.close_soon(protocol.CLOSE_TRY_AGAIN, protocol.SERVER_UNAVAILABLE)

    def found(self) -> None:
        self.lost = False
        log.info("Redis answers again: taking sockets")
        # Redis may have forgotten this process's groups (a restart) or kept them (a partition):
        # adding them again is harmless either way.
        fanout_for(get_channel_layer(settings.GROUP_LAYER_ALIAS)).layer_failed()


redis_watch = RedisWatch()
