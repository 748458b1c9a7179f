"""The web process's one asyncio Redis client, made on first use (the event loop exists by then)."""

from __future__ import annotations

import redis.asyncio as redis

from .. import redis_connections

_redis: redis.Redis | None = None


def redis_client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis_connections.async_client(socket_timeout=1, socket_connect_timeout=1)
    return _redis
