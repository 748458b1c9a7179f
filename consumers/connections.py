"""Counts this web process's open sockets and publishes the count for the ``system`` panel.

The count lives in memory; a task started with the first socket writes it to Redis
every second under a per-process key that expires, so a dead process drops out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import redis.asyncio as redis

from project import heartbeats, redis_connections

log = logging.getLogger(__name__)

PROCESS_KEY = f"{heartbeats.WEB_CONNECTIONS_PREFIX}{socket.gethostname()}:{os.getpid()}"


class ConnectionCounter:
    def __init__(self) -> None:
        self.open = 0
        self._reporter: asyncio.Task | None = None

    def opened(self) -> None:
        self.open += 1
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.get_running_loop().create_task(self._report_forever())

    def closed(self) -> None:
        self.open -= 1

    async def _report_forever(self) -> None:
        """Publish the count every second while sockets are open; stop with the last one."""
        client = redis_connections.async_client(socket_timeout=2, socket_connect_timeout=1)
        try:
            while True:
                try:
                    await client.set(PROCESS_KEY, self.open, ex=heartbeats.WEB_CONNECTIONS_TTL_S)
                except redis.RedisError as error:
                    log.warning("could not publish the connection count: %s", error)
                if self.open <= 0:
                    return
                await asyncio.sleep(1)
        finally:
            await client.aclose()


connections = ConnectionCounter()
