"""A batch of queued reports folded into one write per machine: the latest wins.

The status worker reads every report and removal queued since its last tick
(``project/reportqueue.py``) and folds each machine's entries, in stream order, onto what
the database held for it when the batch began (:class:`Stored`). Entry by entry:

- one whose stream id is not newer than the last one handled for the machine is a
  redelivery (a worker died before acknowledging it): skipped, as it was handled already;
- a report carrying a ``seq`` lower than the machine's, or a ``sent_at`` earlier than its
  (the agent's own order, docs/protocol.md), is *late*: counted, never applied;
- a removal forgets the machine and all it held, its packages and its order included;
- any other report is applied: its state, its progress, its packages upserted by name.

The result (:class:`Plan`) is what applying those entries one at a time would have left,
written once (``workers/fleet.py``). Nothing here touches the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from project.reportqueue import REMOVE, REPORT, Entry, stream_order


@dataclass(frozen=True)
class Stored:
    """A machine (or the tombstone of a removed one) as the database held it."""

    report_id: str = ""
    machine_id: int | None = None  # None: no such machine (maybe a tombstone's report_id)
    state: str = ""
    progress: float = 0.0
    last_report: datetime | None = None
    seq: int | None = None
    sent_at: datetime | None = None
    late_reports: int = 0


@dataclass
class Plan:
    """What one batch does to one machine."""

    name: str
    base: Stored | None  # the row the batch starts from; None once it is removed (or never was)
    handled_id: str  # the newest stream id handled: applied, late, or a removal
    removal_id: str | None = None  # the newest removal: the stored machine goes
    state: str | None = None  # None: no report applied on top of ``base``
    progress: float | None = None  # the latest progress a report gave
    progress_from_packages: bool = False  # the latest report gave none: the mean of the packages
    software: dict[str, dict[str, Any]] = field(default_factory=dict)  # package name -> package
    seq: int | None = None
    sent_at: datetime | None = None
    late: int = 0
    repeated: int = 0

    @property
    def writes_machine(self) -> bool:
        """Whether the machine's row is written: a report applied to it, or one counted late."""
        return self.state is not None or (self.base is not None and self.late > 0)

    def is_late(self, report: dict[str, Any]) -> bool:
        seq, sent_at = report.get("seq"), report.get("sent_at")
        return (seq is not None and self.seq is not None and seq < self.seq) or (
            sent_at is not None
            and self.sent_at is not None
            and datetime.fromisoformat(sent_at) < self.sent_at
        )

    def apply(self, report: dict[str, Any]) -> None:
        self.state = report["state"]
        if report["progress"] is not None:
            self.progress = report["progress"]
        self.progress_from_packages = report["progress"] is None
        self.software.update((package["name"], package) for package in report["software"])
        if report.get("seq") is not None:
            self.seq = report["seq"]
        if report.get("sent_at") is not None:
            self.sent_at = datetime.fromisoformat(report["sent_at"])

    def remove(self, entry_id: str) -> None:
        self.removal_id = entry_id
        self.base, self.state, self.progress, self.progress_from_packages = None, None, None, False
        self.software, self.seq, self.sent_at, self.late = {}, None, None, 0

    def final_progress(self, stored_percents: dict[str, float]) -> float:
        """The machine's progress once written; ``stored_percents``: its packages in the database."""
        if self.progress_from_packages:
            percents = {**stored_percents, **{name: p["percent"] for name, p in self.software.items()}}
            if percents:
                return round(sum(percents.values()) / len(percents), 2)
        if self.progress is not None:
            return round(self.progress, 2)
        return self.base.progress if self.base is not None else 0.0


def is_newer(entry_id: str, than: str) -> bool:
    """Whether stream id ``entry_id`` came after ``than`` (anything is newer than nothing)."""
    return not (entry_id and than) or stream_order(entry_id) > stream_order(than)


def plan_for(name: str, stored: Stored) -> Plan:
    base = stored if stored.machine_id is not None else None
    return Plan(name, base, stored.report_id, seq=stored.seq, sent_at=stored.sent_at)


def fold(entries: Iterable[Entry], stored: dict[str, Stored]) -> dict[str, Plan]:
    """One :class:`Plan` per machine named in ``entries`` (in stream order)."""
    plans: dict[str, Plan] = {}
    for entry in entries:
        if entry.name not in plans:
            plans[entry.name] = plan_for(entry.name, stored.get(entry.name, Stored()))
        plan = plans[entry.name]
        if not is_newer(entry.id, plan.handled_id):
            plan.repeated += 1
            continue
        plan.handled_id = entry.id
        if entry.kind == REMOVE:
            plan.remove(entry.id)
        elif entry.kind == REPORT and entry.report is not None:
            if plan.is_late(entry.report):
                plan.late += 1
            else:
                plan.apply(entry.report)
    return plans
