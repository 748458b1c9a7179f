"""The report checker's cost per report, this tree's against another commit's, in one process.

``project/reports.check_report`` runs in web for every report (and every batch item). The other
tree's module is read with ``git show`` and loaded beside this one; both check the same 5-package
report, alternately, and must agree on the result.

    python bench/report_checker.py --before 58dcb2a --rounds 5 --reports 20000
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

REPORT = {
    "state": "provisioning",
    "progress": 40,
    "seq": 118,
    "sent_at": "2026-11-28T12:00:01.250Z",
    "software": [{"name": f"pkg-{i}", "state": "installing", "percent": 10.0 * i} for i in range(5)],
}


def load_before(commit: str):
    source = subprocess.run(
        ["git", "show", f"{commit}:project/reports.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "reports_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("project.reports_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def per_report_us(module, reports: int) -> float:
    started = time.perf_counter()
    for _ in range(reports):
        module.check_report("m-1", REPORT)
    return (time.perf_counter() - started) / reports * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reports", type=int, default=20000)
    args = parser.parse_args()
    import django

    django.setup()
    from project import reports as after

    before = load_before(args.before)
    assert before.check_report("m-1", REPORT) == after.check_report("m-1", REPORT)
    timings: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        timings["before"].append(per_report_us(before, args.reports))
        timings["after"].append(per_report_us(after, args.reports))
    for tree, values in timings.items():
        print(
            f"{tree}: median {statistics.median(values):.1f} µs per report ({', '.join(f'{v:.1f}' for v in values)})"
        )


if __name__ == "__main__":
    main()
