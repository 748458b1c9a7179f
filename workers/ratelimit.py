"""Per-user, per-room sliding-window rate limit over the stored messages themselves.

Counting what was stored needs no other state, holds across worker processes and
restarts, and cannot drift from what users actually saw.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from .models import Message


def retry_after_s(room: str, author: str, now: datetime, limit: int, window_s: int) -> float | None:
    """Seconds until ``author`` may send again in ``room``, or ``None`` if allowed now."""
    window_start = now - timedelta(seconds=window_s)
    recent = list(
        Message.objects.filter(room=room, author=author, created__gt=window_start)
        .order_by("-created")
        .values_list("created", flat=True)[:limit]
    )
    if len(recent) < limit:
        return None
    oldest_counted = recent[-1]
    wait_s = (oldest_counted + timedelta(seconds=window_s) - now).total_seconds()
    # Round up to the millisecond so that a client waiting exactly this long is let in.
    return max(math.ceil(wait_s * 1000) / 1000, 0.001)
