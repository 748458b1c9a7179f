"""The fleet's persistence: applying agent reports, expiring silent machines, reading state."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Avg, Count

from project.protocol import MACHINE_STATES, iso_utc

from .models import Machine, Software

# Only machines still on their way can go silent; ready and failed ones have stopped
# reporting because they are finished, not because they are gone.
EXPIRING_STATES = (Machine.State.PENDING, Machine.State.PROVISIONING)


@transaction.atomic
def apply_report(name: str, report: dict[str, Any], now: datetime) -> None:
    """Store a checked report (see :func:`project.reports.check_report`) for machine ``name``."""
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
    machine.save(update_fields=["state", "progress", "last_report"])


def remove(name: str) -> bool:
    deleted, _ = Machine.objects.filter(name=name).delete()
    return bool(deleted)


def expire_silent(now: datetime, offline_after_s: int) -> list[str]:
    """Mark machines that have not reported for ``offline_after_s`` offline; their names."""
    silent = Machine.objects.filter(state__in=EXPIRING_STATES, last_report__lt=now - timedelta(seconds=offline_after_s))
    with transaction.atomic():
        names = list(silent.values_list("name", flat=True))
        Machine.objects.filter(name__in=names).update(state=Machine.State.OFFLINE)
    return names


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
