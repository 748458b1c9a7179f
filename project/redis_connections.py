"""Redis clients for everything besides the channel layer, from the one configuration.

``REDIS_URL`` names one server. With ``REDIS_SENTINELS`` (``host:port,host:port,...``) the
clients ask those Sentinels for the master of ``REDIS_SENTINEL_MASTER`` instead and follow a
failover: redis-py's Sentinel pools look the master up again after a connection error. The
channel layer gets the same choice through its own Sentinel support (``settings.CHANNEL_LAYERS``).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from django.conf import settings
from redis.backoff import NoBackoff

# Sentinels answer quickly or not at all: a dead one must not hold a lookup up for long.
SENTINEL_TIMEOUT_S = 0.5


def redis_reconnect_once(asynchronous: bool) -> redis.retry.Retry | redis.asyncio.retry.Retry:
    """A command that fails with a ConnectionError is sent once more, at once, on a new connection.

    After Redis restarts or fails over, every pooled connection is dead and redis-py learns it only
    from the next command on it. Timeouts are not retried: a partition is noticed no later. A
    command the old server ran just before dying may run twice; chat dedups by ``client_id`` and
    status frames by ``seq``."""
    retry_class = redis.asyncio.retry.Retry if asynchronous else redis.retry.Retry
    return retry_class(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))


def sync_client(**options: Any) -> redis.Redis:
    options.setdefault("retry", redis_reconnect_once(asynchronous=False))
    if settings.REDIS_SENTINELS:
        sentinel = redis.sentinel.Sentinel(
            settings.REDIS_SENTINELS, sentinel_kwargs={"socket_timeout": SENTINEL_TIMEOUT_S}
        )
        return sentinel.master_for(settings.REDIS_SENTINEL_MASTER, db=settings.REDIS_DB, **options)
    return redis.Redis.from_url(settings.REDIS_URL, **options)


def async_client(**options: Any) -> redis.asyncio.Redis:
    options.setdefault("retry", redis_reconnect_once(asynchronous=True))
    if settings.REDIS_SENTINELS:
        sentinel = redis.asyncio.sentinel.Sentinel(
            settings.REDIS_SENTINELS, sentinel_kwargs={"socket_timeout": SENTINEL_TIMEOUT_S}
        )
        return sentinel.master_for(settings.REDIS_SENTINEL_MASTER, db=settings.REDIS_DB, **options)
    return redis.asyncio.Redis.from_url(settings.REDIS_URL, **options)
