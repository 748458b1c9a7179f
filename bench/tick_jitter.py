"""Measures the scheduler's tick timing against wall-clock second boundaries.

Starts a private Redis and the real ``runscheduler`` process, then reads the
``status.tick`` messages off the status worker's channel (standing in for the worker)
for ``--seconds`` and reports, per tick, how far from its boundary it was sent
(``sent_ns - tick_ns``) and received (``now - tick_ns``), and any gaps in ``seq``.

    python bench/tick_jitter.py --seconds 600 --out bench/results/tick_jitter.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def collect(seconds: float) -> list[dict]:
    from channels.layers import get_channel_layer

    from project import protocol

    layer = get_channel_layer()
    ticks = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            message = await asyncio.wait_for(layer.receive(protocol.STATUS_WORKER), 3)
        except TimeoutError:
            continue
        if message["type"] == protocol.STATUS_TICK:
            ticks.append({**message, "received_ns": time.time_ns()})
    return ticks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from project import embedded_redis

    workdir = Path(tempfile.mkdtemp(prefix="tick-jitter-"))
    redis_server, redis_url = embedded_redis.start(workdir / "redis")
    os.environ["REDIS_URL"] = redis_url
    scheduler = subprocess.Popen(
        [sys.executable, "manage.py", "runscheduler"],
        cwd=ROOT,
        env=os.environ,
        stdout=open(workdir / "scheduler.log", "wb"),  # noqa: SIM115 (the child keeps it open)
        stderr=subprocess.STDOUT,
    )
    try:
        import django

        django.setup()
        ticks = asyncio.run(collect(args.seconds))
    finally:
        scheduler.terminate()
        scheduler.wait(10)
        redis_server.terminate()

    sent_ms = [(t["sent_ns"] - t["tick_ns"]) / 1e6 for t in ticks]
    received_ms = [(t["received_ns"] - t["tick_ns"]) / 1e6 for t in ticks]
    seqs = [t["seq"] for t in ticks]
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, {platform.platform()}",
        "python": platform.python_version(),
        "seconds": args.seconds,
        "ticks": len(ticks),
        "seq_gaps": sum(1 for a, b in itertools.pairwise(seqs) if b != a + 1),
        "boundaries_not_on_second": sum(1 for t in ticks if t["tick_ns"] % 1_000_000_000),
        "sent_after_boundary_ms": {
            "min": min(sent_ms),
            "p50": statistics.median(sent_ms),
            "p99": percentile(sent_ms, 0.99),
            "max": max(sent_ms),
        },
        "received_after_boundary_ms": {
            "min": min(received_ms),
            "p50": statistics.median(received_ms),
            "p99": percentile(received_ms, 0.99),
            "max": max(received_ms),
        },
        "ticks_outside_50ms": sum(1 for value in sent_ms if abs(value) > 50),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
