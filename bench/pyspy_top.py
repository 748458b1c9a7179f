"""Summarises a py-spy ``--format raw`` profile (``bench/run.py s1 --profile``): the functions
with the most samples, on their own and with what they call.

    python bench/pyspy_top.py bench/results/profile-s1-1000-m0-daphne.txt [--top 30]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def summarise(path: Path) -> tuple[int, Counter, Counter]:
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        samples = int(count)
        total += samples
        frames = stack.split(";")
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    return total, own, inclusive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    total, own, inclusive = summarise(args.profile)
    print(f"{total} samples")
    for title, counter in (("self", own), ("inclusive", inclusive)):
        print(f"--- {title}")
        for frame, samples in counter.most_common(args.top):
            print(f"{100 * samples / total:5.1f}% {frame}")


if __name__ == "__main__":
    main()
