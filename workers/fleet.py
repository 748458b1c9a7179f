"""The fleet's persistence: applying agent reports, expiring silent machines, reading state."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Avg, Count

from project.protocol import MACHINE_STATES, iso_utc
from project.reportqueue import REMOVE, REPORT, Entry, stream_order

from .locks import lock_machines
from .models import Machine, RemovedMachine, Software

# Only machines still on their way can go silent; ready and failed ones have stopped
# reporting because they are finished, not because they are gone.
EXPIRING_STATES = (Machine.State.PENDING, Machine.State.PROVISIONING)


# A removal is remembered this long: far longer than a stopped worker's reports wait to be claimed.
TOMBSTONE_KEEP = timedelta(hours=1)


@transaction.atomic
def apply_entries(entries: Iterable[Entry], now: datetime) -> None:
    """Apply queued reports and removals in stream order, in one transaction."""
    entries = list(entries)
    lock_machines(entry.name for entry in entries)
    for entry in entries:
        if entry.kind == REPORT:
            apply_report(entry.name, entry.report, now, entry.id)
        elif entry.kind == REMOVE:
            remove(entry.name, now, entry.id)


def is_newer(report_id: str, than: str) -> bool:
    """Whether stream id ``report_id`` came after ``than`` (anything is newer than nothing)."""
    return not (report_id and than) or stream_order(report_id) > stream_order(than)


def last_applied_id(name: str, machine: Machine | None) -> str:
    if machine is not None:
        return machine.report_id
    return RemovedMachine.objects.filter(name=name).values_list("report_id", flat=True).first() or ""


def apply_report(name: str, report: dict[str, Any], now: datetime, report_id: str = "") -> bool:
    """Store a checked report (see :func:`project.reports.check_report`) for machine ``name``.

    ``False`` when a report or removal with a later ``report_id`` (the reports stream's id) was
    applied already: an entry delivered again after a worker died must not roll the machine back.
    """
    if not is_newer(report_id, last_applied_id(name, Machine.objects.filter(name=name).first())):
        return False
    machine, _ = Machine.objects.get_or_create(name=name)
    if report["software"]:
        Software.objects.bulk_create(
            [Software(machine=machine, **package) for package in report["software"]],
            update_conflicts=True,
            unique_fields=["machine", "name"],
            update_fields=["state", "percent"],
        )
    progress = report["progress"]
    if progress is None:
        # Without an overall figure, the machine is as far along as its packages on average.
        progress = machine.software.aggregate(mean=Avg("percent"))["mean"]
    machine.state = report["state"]
    machine.progress = machine.progress if progress is None else round(progress, 2)
    machine.last_report = now
    machine.report_id = report_id
    machine.save(update_fields=["state", "progress", "last_report", "report_id"])
    return True


def remove(name: str, now: datetime, report_id: str = "") -> bool:
    """Forget machine ``name``, unless a later report already brought it back."""
    if not is_newer(report_id, last_applied_id(name, Machine.objects.filter(name=name).first())):
        return False
    deleted, _ = Machine.objects.filter(name=name).delete()
    RemovedMachine.objects.filter(removed_at__lt=now - TOMBSTONE_KEEP).delete()
    if report_id:
        RemovedMachine.objects.update_or_create(name=name, defaults={"report_id": report_id, "removed_at": now})
    return bool(deleted)


def silent(cutoff: datetime) -> list[str]:
    """Machines still on their way whose last report is older than ``cutoff``."""
    return list(
        Machine.objects.filter(state__in=EXPIRING_STATES, last_report__lt=cutoff).values_list("name", flat=True)
    )


def expire(names: list[str], cutoff: datetime) -> None:
    """Mark the :func:`silent` machines ``names`` offline, unless they reported since."""
    if names:
        Machine.objects.filter(name__in=names, state__in=EXPIRING_STATES, last_report__lt=cutoff).update(
            state=Machine.State.OFFLINE
        )


def machine_payload(machine: Machine) -> dict[str, Any]:
    return {
        "name": machine.name,
        "state": machine.state,
        "progress": machine.progress,
        "last_report": iso_utc(machine.last_report),
        "software": [
            {"name": package.name, "state": package.state, "percent": package.percent}
            for package in machine.software.all()
        ],
    }


def machines(names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Whole machines (with their software), all or only ``names``, ordered by name."""
    query = Machine.objects.prefetch_related("software")
    if names is not None:
        query = query.filter(name__in=list(names))
    return [machine_payload(machine) for machine in query]


def summary() -> dict[str, Any]:
    """Counts per machine state and overall progress (the mean of every machine's)."""
    states = dict.fromkeys(MACHINE_STATES, 0)
    for row in Machine.objects.values("state").annotate(count=Count("id")).order_by():
        states[row["state"]] = row["count"]
    mean = Machine.objects.aggregate(mean=Avg("progress"))["mean"]
    return {"machines": sum(states.values()), "states": states, "progress": round(mean or 0.0, 2)}
