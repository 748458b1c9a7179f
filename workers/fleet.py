"""The fleet's persistence: applying agent reports in batches, expiring silent machines, reading state.

A tick's reports and removals are folded into one plan per machine (``workers/coalesce.py``)
and written in one transaction with a few bulk statements, whatever their number: the rows
they touch are read (and locked) at once, then machines and packages are upserted at once
(``workers/bulk.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Avg, Count, Sum

from project.protocol import MACHINE_STATES, iso_utc
from project.reportqueue import Entry

from .bulk import db_datetime, upsert
from .coalesce import Plan, Stored, fold
from .locks import lock_machines
from .models import Machine, RemovedMachine, Software

log = logging.getLogger(__name__)

# Only machines still on their way can go silent; ready and failed ones have stopped
# reporting because they are finished, not because they are gone.
EXPIRING_STATES = (Machine.State.PENDING, Machine.State.PROVISIONING)


# A removal is remembered this long: far longer than a stopped worker's reports wait to be claimed.
TOMBSTONE_KEEP = timedelta(hours=1)
# Names per ``IN (...)``: under every SQLite build's limit on a statement's parameters.
LOOKUP_CHUNK = 900
MACHINE_FIELDS = [
    "state",
    "progress",
    "last_report",
    "report_id",
    "agent_seq",
    "agent_sent_at",
    "late_reports",
]


@dataclass(frozen=True)
class Applied:
    """What a batch did: machines written with a report, removed, reports late, entries repeated."""

    reported: int = 0
    removed: int = 0
    late: int = 0
    repeated: int = 0


def chunks(values: Sequence) -> Iterator[Sequence]:
    """``values`` in slices small enough for one ``IN (...)``."""
    for start in range(0, len(values), LOOKUP_CHUNK):
        yield values[start : start + LOOKUP_CHUNK]


def stored_state(names: Sequence[str]) -> dict[str, Stored]:
    """What the database holds for ``names``: their rows, locked until the transaction ends
    (PostgreSQL; SQLite's write transactions are serial anyway), else their tombstones."""
    stored: dict[str, Stored] = {}
    for chunk in chunks(names):
        rows = Machine.objects.select_for_update().filter(name__in=chunk).order_by("name")
        for row in rows.values("id", "name", *MACHINE_FIELDS):
            stored[row["name"]] = Stored(
                row["report_id"],
                row["id"],
                row["state"],
                row["progress"],
                row["last_report"],
                row["agent_seq"],
                row["agent_sent_at"],
                row["late_reports"],
            )
    unknown = [name for name in names if name not in stored]
    for chunk in chunks(unknown):
        for name, report_id in RemovedMachine.objects.filter(name__in=chunk).values_list("name", "report_id"):
            stored[name] = Stored(report_id)
    return stored


def stored_percents(plans: Iterable[Plan]) -> dict[int, dict[str, float]]:
    """The packages (name -> percent) of the stored machines whose progress is their packages' mean."""
    ids = [
        plan.base.machine_id
        for plan in plans
        if plan.progress_from_packages and plan.base is not None and plan.base.machine_id is not None
    ]
    percents: dict[int, dict[str, float]] = {machine_id: {} for machine_id in ids}
    for chunk in chunks(ids):
        for machine_id, name, percent in Software.objects.filter(machine_id__in=chunk).values_list(
            "machine_id", "name", "percent"
        ):
            percents[machine_id][name] = percent
    return percents


def machine_row(plan: Plan, percents: dict[int, dict[str, float]], now: Any) -> tuple:
    """The machine's row as :func:`write` stores it: ``name`` then ``MACHINE_FIELDS``; ``now``
    as :func:`db_datetime` gives it (once per batch: per row it was 6 % of the worker's tick)."""
    base = plan.base
    late_reports = (base.late_reports if base else 0) + plan.late
    if plan.state is None:  # only late reports: the row keeps what it had, and counts them
        assert base is not None, "a report can only be late against a stored machine"
        state, progress, last_report = base.state, base.progress, db_datetime(base.last_report)
    else:
        state, last_report = plan.state, now
        stored = percents.get(base.machine_id, {}) if base and base.machine_id is not None else {}
        progress = plan.final_progress(stored)
    return (
        plan.name,
        state,
        progress,
        last_report,
        plan.handled_id,
        plan.seq,
        db_datetime(plan.sent_at),
        late_reports,
    )


def forget(plans: list[Plan], now: datetime) -> None:
    """Delete the machines removed in this batch (their packages go with them) and remember
    each removal's stream id, so that an older report delivered again cannot bring one back."""
    names = [plan.name for plan in plans]
    for chunk in chunks(names):
        Machine.objects.filter(name__in=chunk).delete()
    RemovedMachine.objects.filter(removed_at__lt=now - TOMBSTONE_KEEP).delete()
    upsert(
        RemovedMachine,
        ["name", "report_id", "removed_at"],
        ["name"],
        ["report_id", "removed_at"],
        [(plan.name, plan.removal_id, db_datetime(now)) for plan in plans if plan.removal_id],
    )


def write(plans: list[Plan], now: datetime) -> None:
    """Upsert the machines of ``plans`` (sorted by name, the order rows are locked in), then
    their packages, each in as few statements as the database takes (``workers/bulk.py``)."""
    percents, stored_now = stored_percents(plans), db_datetime(now)
    upsert(
        Machine,
        ["name", *MACHINE_FIELDS],
        ["name"],
        MACHINE_FIELDS,
        [machine_row(plan, percents, stored_now) for plan in plans],
    )
    ids = {plan.name: plan.base.machine_id for plan in plans if plan.base is not None}
    created = [plan.name for plan in plans if plan.base is None and plan.software]
    for chunk in chunks(created):
        ids.update(Machine.objects.filter(name__in=chunk).values_list("name", "id"))
    upsert(
        Software,
        ["machine", "name", "state", "percent"],
        ["machine", "name"],
        ["state", "percent"],
        [
            (ids[plan.name], package["name"], package["state"], package["percent"])
            for plan in plans
            for package in plan.software.values()
        ],
    )


@transaction.atomic
def apply_entries(entries: Iterable[Entry], now: datetime) -> Applied:
    """Apply queued reports and removals (in stream order) in one transaction, one write per machine."""
    entries = list(entries)
    if not entries:
        return Applied()
    lock_machines(entry.name for entry in entries)
    plans = fold(entries, stored_state(sorted({entry.name for entry in entries})))
    ordered = [plans[name] for name in sorted(plans)]
    removals = [plan for plan in ordered if plan.removal_id is not None]
    if removals:
        forget(removals, now)
    written = [plan for plan in ordered if plan.writes_machine]
    if written:
        write(written, now)
    applied = Applied(
        reported=sum(plan.state is not None for plan in written),
        removed=len(removals),
        late=sum(plan.late for plan in ordered),
        repeated=sum(plan.repeated for plan in ordered),
    )
    if applied.late:
        log.debug(
            "ignored %d late report(s): %s",
            applied.late,
            ", ".join(f"{plan.name} x{plan.late}" for plan in ordered if plan.late),
        )
    return applied


def silent(cutoff: datetime) -> list[str]:
    """Machines still on their way whose last report is older than ``cutoff``."""
    return list(
        Machine.objects.filter(state__in=EXPIRING_STATES, last_report__lt=cutoff).values_list(
            "name", flat=True
        )
    )


def expire(names: list[str], cutoff: datetime) -> None:
    """Mark the :func:`silent` machines ``names`` offline, unless they reported since."""
    if names:
        Machine.objects.filter(name__in=names, state__in=EXPIRING_STATES, last_report__lt=cutoff).update(
            state=Machine.State.OFFLINE
        )


def machines(names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Whole machines (with their software by name), all or only ``names``, ordered by name.

    Read as plain rows, no model instances: with 2,000 machines changing in a tick, building
    them was the update's largest cost after applying the reports."""
    columns = ("id", "name", "state", "progress", "last_report")
    if names is None:
        rows = list(Machine.objects.order_by("name").values_list(*columns))
        packages = [Software.objects.all()]
    else:
        rows = sorted(
            (
                row
                for chunk in chunks(sorted(set(names)))
                for row in Machine.objects.filter(name__in=chunk).values_list(*columns)
            ),
            key=lambda row: row[1],
        )
        ids = [row[0] for row in rows]
        packages = [Software.objects.filter(machine_id__in=chunk) for chunk in chunks(ids)]
    software: dict[int, list[dict[str, Any]]] = {row[0]: [] for row in rows}
    for query in packages:
        rows_of_packages = query.order_by("name").values_list("machine_id", "name", "state", "percent")
        for machine_id, name, state, percent in rows_of_packages:
            if machine_id in software:  # not a machine added since its row was read
                software[machine_id].append({"name": name, "state": state, "percent": percent})
    return [
        {
            "name": name,
            "state": state,
            "progress": progress,
            "last_report": iso_utc(last_report),
            "software": software[machine_id],
        }
        for machine_id, name, state, progress, last_report in rows
    ]


def summary() -> dict[str, Any]:
    """Counts per machine state, overall progress (the mean of every machine's) and how many
    reports were ignored as late (older than one already stored for their machine)."""
    states = dict.fromkeys(MACHINE_STATES, 0)
    for row in Machine.objects.values("state").annotate(count=Count("id")).order_by():
        states[row["state"]] = row["count"]
    totals = Machine.objects.aggregate(mean=Avg("progress"), late=Sum("late_reports"))
    return {
        "machines": sum(states.values()),
        "states": states,
        "progress": round(totals["mean"] or 0.0, 2),
        "late_reports": totals["late"] or 0,
    }
