"""What the metrics add per frame delivered: CPU per frame through the real Outbox (1,000
sockets, 200 frames each, a writer that returns at once) in a child process started as uvicorn
starts its workers, so in prometheus_client's multiprocess mode, with the outbox's counters as
they are and replaced by no-ops, alternately.

    python bench/metrics_cost.py [runs]
"""

import asyncio
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class Off:
    """A counter that counts nothing: the outbox without metrics."""

    def inc(self, amount=1):
        pass


def measure(counted: bool, sockets: int = 1000, frames: int = 200) -> float:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from consumers.outbox import Outbox
    from project import metrics

    assert metrics.FAMILY_DIR is not None  # like a web process: memory-mapped values

    async def main() -> float:
        async def write(text: str) -> None:
            pass

        boxes = [Outbox(write, lambda box: None, 256, 1 << 20, kind="status") for _ in range(sockets)]
        if not counted:
            for box in boxes:
                box.delivered = box.dropped = Off()
        for box in boxes:
            box.start()
        await asyncio.sleep(0)
        text = "x" * 400
        started = time.process_time()
        for _ in range(frames):
            for box in boxes:
                box.put(text)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        return (time.process_time() - started) / (sockets * frames) * 1e6

    return asyncio.run(main())


if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    results = {True: [], False: []}
    with ctx.Pool(1) as pool:
        for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
            for counted in (False, True):
                results[counted].append(pool.apply(measure, (counted,)))
    for counted, values in results.items():
        print(
            f"counters {'on ' if counted else 'off'}: µs/frame median {statistics.median(values):.3f}  runs {[round(v, 3) for v in values]}"
        )
