"""The web process's one asyncio Redis client, made on first use (the event loop exists by then),
and the queue its single reports go through together."""

from __future__ import annotations

import redis.asyncio as redis
from django.conf import settings

from .. import redis_connections, reportqueue

_redis: redis.Redis | None = None
_reports: reportqueue.Together | None = None


def redis_client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis_connections.async_client(socket_timeout=1, socket_connect_timeout=1)
    return _redis


def report_queue() -> reportqueue.Together:
    global _reports
    if _reports is None:
        _reports = reportqueue.Together(
            redis_client(), settings.REPORTS_QUEUE_MAX, settings.REPORTS_LINGER_MS / 1000
        )
    return _reports
