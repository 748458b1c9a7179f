"""Watching the status stream as a dashboard does while processes are killed under it.

Shared by the fault tests (tests/test_status_failover.py) and the failover benchmark
(bench/run.py failover): a :class:`StreamWatch` reads a real socket, applies the client rules
of docs/protocol.md (resync on a new epoch or a seq gap; ignore what a snapshot covers) and
keeps every frame with its arrival time; :func:`leader` says which process holds the clock.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from project import heartbeats, keys

from .stack import Stack


@dataclass
class StreamWatch:
    """A dashboard's view of the stream: ``(arrival monotonic s, frame)`` for every frame."""

    frames: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    # Arrival time of each update that made the dashboard ask for a resync.
    resyncs_at: list[float] = field(default_factory=list)
    epoch: str | None = None
    seq: int | None = None

    async def follow(self, ws) -> None:
        """Read ``ws`` until cancelled, resyncing as docs/protocol.md's client rules say."""
        awaiting_snapshot = False
        async for raw in ws:
            frame = json.loads(raw)
            self.frames.append((time.monotonic(), frame))
            if frame["type"] == "status.snapshot":
                self.epoch, self.seq, awaiting_snapshot = frame["epoch"], frame["seq"], False
            elif frame["type"] == "status.update" and not awaiting_snapshot:
                if frame["epoch"] == self.epoch and frame["seq"] <= self.seq:
                    continue  # already covered
                if frame["epoch"] != self.epoch or frame["seq"] != self.seq + 1:
                    self.resyncs_at.append(self.frames[-1][0])
                    awaiting_snapshot = True
                    await ws.send(json.dumps({"type": "status.resync"}))
                    continue
                self.seq = frame["seq"]

    def updates(self, since: float = 0.0, until: float = float("inf")) -> list[tuple[float, dict[str, Any]]]:
        return [(at, f) for at, f in self.frames if f["type"] == "status.update" and since <= at <= until]

    def books(self, since: float = 0.0, until: float | None = None) -> dict[str, Any]:
        """What a dashboard saw between ``since`` and ``until``: rate, epochs, holes, repeats, gaps."""
        until = time.monotonic() if until is None else until
        updates = self.updates(since, until)
        seqs = [f["seq"] for _, f in updates]
        ticks = [f["tick_ns"] for _, f in updates]
        arrivals = [at for at, _ in updates]
        gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
        distinct = sorted(set(seqs))
        return {
            "updates": len(updates),
            "seconds": round(until - since, 3),
            "updates_per_s": round(len(updates) / max(until - since, 1e-9), 3),
            "epochs": sorted({f["epoch"] for _, f in updates}),
            "missed_seq": sum(later - earlier - 1 for earlier, later in itertools.pairwise(distinct)),
            "repeated_seq": len(seqs) - len(distinct),
            "ticks_out_of_order": sum(1 for earlier, later in itertools.pairwise(ticks) if later <= earlier),
            "worst_gap_s": round(max(gaps, default=0.0), 3),
            "resyncs_sent": sum(1 for at in self.resyncs_at if since <= at <= until),
        }


def pid_of(instance: str) -> int:
    """The pid in an instance id (``<host>:<pid>``)."""
    return int(instance.rpartition(":")[2])


def leader(stack: Stack, client: redis.Redis) -> str | None:
    """The label of the stack's process that holds the clock's lease, if any."""
    holder = heartbeats.parse_lease(client.get(keys.SCHEDULER_LEASE))
    if holder is None:
        return None
    pid = pid_of(holder[0])
    return next((label for label, process in stack.processes.items() if process.pid == pid), None)


def wait_until_standing_by(stack: Stack, client: redis.Redis, label: str, timeout_s: float = 30) -> None:
    """Wait until the scheduler ``label`` (just started) says it is alive: booted and standing by."""
    deadline = time.monotonic() + timeout_s
    pid = stack.processes[label].pid
    while time.monotonic() < deadline:
        marks = client.zrangebyscore(keys.SCHEDULER_INSTANCES, heartbeats.alive_since_ms(), "+inf")
        if any(pid_of(mark.decode()) == pid for mark in marks):
            return
        time.sleep(0.05)
    raise AssertionError(f"scheduler {label} did not stand by within {timeout_s} s")


def wait_for_leader(stack: Stack, client: redis.Redis, timeout_s: float = 10) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        label = leader(stack, client)
        if label is not None:
            return label
        time.sleep(0.05)
    raise AssertionError(f"no scheduler of the stack took the lease within {timeout_s} s")


async def next_update_after(watch: StreamWatch, moment: float, timeout_s: float = 10) -> float:
    """Seconds from ``moment`` to the first update that arrived after it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        later = watch.updates(since=moment)
        if later:
            return later[0][0] - moment
        await asyncio.sleep(0.02)
    raise AssertionError(f"no update within {timeout_s} s of the fault")
