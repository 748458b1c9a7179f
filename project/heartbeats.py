"""Liveness records that each long-running process keeps in Redis.

``/readyz`` and the status ``system`` panel read them. A record is a small JSON value
under ``fleetchat:heartbeat:<process>`` with the wall-clock time it was written; it
expires on its own, so a dead process's record disappears instead of lying.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

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
