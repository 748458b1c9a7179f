"""Liveness records that each long-running process keeps in Redis.

``/readyz`` and the status ``system`` panel read them. A record is a small JSON value
under ``fleetchat:heartbeat:<process>`` with the wall-clock time it was written; it
expires on its own, so a dead process's record disappears instead of lying.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import orjson

from . import keys

KEY_PREFIX = "fleetchat:heartbeat:"
TTL_S = 30
SCHEDULER = "scheduler"
WORKER = "worker"


def key(process: str) -> str:
    return KEY_PREFIX + process


def record(**fields: Any) -> bytes:
    return orjson.dumps({"ts": time.time(), **fields})


def age_s(raw: bytes | None, now: float | None = None) -> float | None:
    """Seconds since a record was written, or ``None`` when there is none."""
    if raw is None:
        return None
    return (time.time() if now is None else now) - orjson.loads(raw)["ts"]


def parse(raw: bytes | None) -> dict[str, Any] | None:
    return None if raw is None else orjson.loads(raw)


# Each web process keeps the number of sockets it has open under its own key.
WEB_CONNECTIONS_PREFIX = "fleetchat:web-connections:"
WEB_CONNECTIONS_TTL_S = 5


# --- Instances of a process kind (several schedulers, several status workers) ---------------

# An instance that has not said it is alive for this long is counted as gone.
INSTANCE_TTL_MS = 3000


def instance_id() -> str:
    """This process, as other processes name it: ``<host>:<pid>``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def mark_alive(client: Any, kind_key: str, instance: str) -> Any:
    """Record that ``instance`` is alive (a sync or asyncio redis client; await the result of the latter)."""
    return client.zadd(kind_key, {instance: now_ms()})


def alive_since_ms() -> int:
    """The oldest 'alive' mark that still counts."""
    return now_ms() - INSTANCE_TTL_MS


def queue_topology(pipe: Any) -> None:
    """Queue, on a sync or asyncio pipeline, the reads :func:`topology` needs."""
    since = alive_since_ms()
    pipe.get(keys.SCHEDULER_LEASE)
    for kind_key in (keys.SCHEDULER_INSTANCES, keys.STATUS_WORKER_INSTANCES):
        pipe.zremrangebyscore(kind_key, "-inf", since - 60_000)  # forget the long gone
        pipe.zcount(kind_key, since, "+inf")


def topology(results: list[Any]) -> dict[str, Any]:
    """Who leads the clock and how many schedulers and status workers are alive."""
    lease, _, schedulers, _, status_workers = results
    holder = parse_lease(lease)
    return {
        "leader": None if holder is None else holder[0],
        "token": None if holder is None else holder[1],
        "schedulers": schedulers,
        "status_workers": status_workers,
    }


def parse_lease(raw: bytes | str | None) -> tuple[str, int] | None:
    """``(holder, fencing token)`` of the scheduler lease's value, or ``None`` when nobody leads."""
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    holder, _, token = text.rpartition(" ")
    return holder, int(token)
