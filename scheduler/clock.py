"""Wall-clock boundary math: when the next tick is due and which ticks a stall skipped.

Sleeping ``1 s`` after each tick drifts by the time each tick takes; sleeping *to the
next boundary* does not. After a stall (a paused process, an overloaded machine) the
clock emits one tick for the latest boundary and skips the missed ones rather than
bursting them out late.
"""

from __future__ import annotations

from dataclasses import dataclass

NS_PER_S = 1_000_000_000


def next_boundary_ns(now_ns: int, period_ns: int) -> int:
    """The first multiple of ``period_ns`` strictly after ``now_ns``."""
    return (now_ns // period_ns + 1) * period_ns


@dataclass(frozen=True)
class Tick:
    tick_ns: int
    """The boundary this tick stands for (wall-clock ns since the epoch)."""
    skipped: int
    """Boundaries passed over since the previous tick because the process was late."""


def due_tick(now_ns: int, expected_ns: int, period_ns: int) -> Tick | None:
    """The tick to emit on waking at ``now_ns`` when the boundary ``expected_ns`` was due.

    ``None`` if woken early (the caller sleeps again). Otherwise the latest boundary
    at or before ``now_ns``; any boundaries between ``expected_ns`` and it are skipped.
    """
    if now_ns < expected_ns:
        return None
    latest_ns = now_ns - (now_ns - expected_ns) % period_ns
    return Tick(tick_ns=latest_ns, skipped=(latest_ns - expected_ns) // period_ns)
