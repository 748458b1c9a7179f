"""The status feed's bookkeeping: epoch, sequence, and what changed since the last update.

Pure state, no I/O, so that the delta logic can be tested on its own. The status
worker marks machines changed or removed as reports arrive and, on each tick,
:meth:`StatusFeed.advance` hands over exactly what the next ``status.update`` carries.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Step:
    seq: int
    changed: list[str]
    removed: list[str]


@dataclass
class StatusFeed:
    worker_epoch: str = field(default_factory=lambda: secrets.token_hex(4))
    scheduler_epoch: str = "0"
    seq: int = 0
    changed: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)

    @property
    def epoch(self) -> str:
        """Changes whenever the sequence restarts: a new scheduler or a new worker."""
        return f"{self.scheduler_epoch}-{self.worker_epoch}"

    def mark_changed(self, names: list[str] | set[str]) -> None:
        self.changed.update(names)
        self.removed.difference_update(names)

    def mark_removed(self, name: str) -> None:
        self.changed.discard(name)
        self.removed.add(name)

    def follow(self, scheduler_epoch: str) -> bool:
        """Adopt the scheduler's epoch; ``True`` if it was new (the sequence restarts)."""
        if scheduler_epoch == self.scheduler_epoch:
            return False
        self.scheduler_epoch = scheduler_epoch
        self.seq = 0
        return True

    def advance(self) -> Step:
        """The next update's sequence number and its changes; the changes are cleared."""
        self.seq += 1
        step = Step(self.seq, sorted(self.changed), sorted(self.removed))
        self.changed.clear()
        self.removed.clear()
        return step
