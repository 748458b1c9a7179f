"""How the status worker applies a batch of queued reports (workers/coalesce.py, workers/fleet.py),
against the test database: the agent's order (``seq``, ``sent_at``), redeliveries, removals,
and coalescing, which must leave exactly what applying the entries one at a time leaves.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from project.reportqueue import REMOVE, REPORT, Entry
from project.reports import check_report
from workers import fleet
from workers.models import Machine, RemovedMachine, Software

pytestmark = pytest.mark.django_db(transaction=True)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


class Stream:
    """Entries with ids in stream order, as the reports stream gives them out."""

    def __init__(self) -> None:
        self.n = 0

    def next_id(self) -> str:
        self.n += 1
        return f"{1_700_000_000_000 + self.n // 3}-{self.n % 3}"

    def report(self, name: str, **body) -> Entry:
        return Entry(self.next_id(), REPORT, name, check_report(name, body))

    def removal(self, name: str) -> Entry:
        return Entry(self.next_id(), REMOVE, name, None)


@pytest.fixture
def stream() -> Stream:
    return Stream()


def machine(name: str) -> Machine:
    return Machine.objects.get(name=name)


def fleet_state() -> tuple[list[tuple], list[tuple], list[tuple]]:
    """Every machine, package and tombstone, as comparable rows."""
    machines = list(Machine.objects.order_by("name").values_list("name", *fleet.MACHINE_FIELDS))
    packages = list(
        Software.objects.order_by("machine__name", "name").values_list(
            "machine__name", "name", "state", "percent"
        )
    )
    tombstones = list(RemovedMachine.objects.order_by("name").values_list("name", "report_id"))
    return machines, packages, tombstones


def test_a_lower_seq_is_late_counted_and_not_applied(stream):
    fleet.apply_entries([stream.report("m1", state="ready", progress=100, seq=5)], NOW)

    applied = fleet.apply_entries([stream.report("m1", state="provisioning", progress=10, seq=3)], NOW)

    assert (applied.reported, applied.late) == (0, 1)
    m1 = machine("m1")
    assert (m1.state, m1.progress, m1.agent_seq, m1.late_reports) == ("ready", 100, 5, 1)
    assert fleet.summary()["late_reports"] == 1


def test_an_earlier_sent_at_is_late(stream):
    fleet.apply_entries([stream.report("m1", state="ready", sent_at="2026-11-28T12:00:00.002+00:00")], NOW)

    applied = fleet.apply_entries(
        [stream.report("m1", state="failed", sent_at="2026-11-28T12:00:00.001Z")], NOW
    )

    assert applied.late == 1
    assert machine("m1").state == "ready"


def test_an_equal_seq_is_applied_in_arrival_order(stream):
    applied = fleet.apply_entries(
        [stream.report("m1", state="provisioning", seq=4), stream.report("m1", state="ready", seq=4)], NOW
    )

    assert (applied.late, machine("m1").state) == (0, "ready")


def test_a_report_without_seq_is_applied_and_keeps_the_stored_seq(stream):
    fleet.apply_entries([stream.report("m1", state="provisioning", seq=7)], NOW)
    fleet.apply_entries([stream.report("m1", state="ready")], NOW)

    late = fleet.apply_entries([stream.report("m1", state="failed", seq=6)], NOW)

    assert (machine("m1").state, machine("m1").agent_seq, late.late) == ("ready", 7, 1)


def test_a_removal_forgets_the_seq(stream):
    fleet.apply_entries([stream.report("m1", state="ready", seq=100), stream.removal("m1")], NOW)

    applied = fleet.apply_entries([stream.report("m1", state="pending", seq=1)], NOW)

    assert (applied.reported, machine("m1").state, machine("m1").agent_seq) == (1, "pending", 1)


def test_a_late_report_delivered_again_is_counted_once(stream):
    fleet.apply_entries([stream.report("m1", state="ready", seq=5)], NOW)
    late = stream.report("m1", state="pending", seq=1)
    fleet.apply_entries([late], NOW)

    again = fleet.apply_entries([late], NOW)

    assert (again.late, again.repeated, machine("m1").late_reports) == (0, 1, 1)


def test_a_batch_writes_many_machines_and_their_packages_at_once(stream):
    entries = [
        stream.report(
            f"m{n:04d}",
            state="provisioning",
            software=[{"name": f"p{k}", "state": "installing", "percent": n % 100} for k in range(5)],
        )
        for n in range(1200)
    ]  # more than one statement's worth on SQLite

    applied = fleet.apply_entries(entries, NOW)

    assert applied.reported == 1200
    assert Software.objects.count() == 6000
    assert machine("m1199").progress == 99  # the mean of its packages


def test_progress_without_a_figure_is_the_mean_of_stored_and_reported_packages(stream):
    fleet.apply_entries(
        [
            stream.report(
                "m1",
                state="provisioning",
                progress=50,
                software=[
                    {"name": "a", "state": "done", "percent": 100},
                    {"name": "b", "state": "installing", "percent": 20},
                ],
            )
        ],
        NOW,
    )

    fleet.apply_entries(
        [
            stream.report(
                "m1",
                state="provisioning",
                software=[
                    {"name": "b", "state": "installing", "percent": 40},
                    {"name": "c", "state": "queued", "percent": 0},
                ],
            )
        ],
        NOW,
    )

    assert machine("m1").progress == round((100 + 40 + 0) / 3, 2)


# --- coalescing is applying one at a time, faster ----------------------------------------------

NAMES = ("m1", "m2", "m3")
PACKAGE = st.fixed_dictionaries(
    {
        "name": st.sampled_from(("a", "b", "c")),
        "state": st.sampled_from(("queued", "installing", "done", "failed")),
        "percent": st.integers(0, 100),
    }
)
REPORT_BODY = st.fixed_dictionaries(
    {"state": st.sampled_from(("pending", "provisioning", "ready", "failed"))},
    optional={
        "progress": st.one_of(st.none(), st.floats(0, 100)),
        "software": st.lists(PACKAGE, max_size=3, unique_by=lambda package: package["name"]),
        "seq": st.integers(0, 5),
        "sent_at": st.integers(0, 5).map(lambda second: f"2026-11-28T12:00:0{second}Z"),
    },
)
ENTRY = st.tuples(st.sampled_from(NAMES), st.one_of(REPORT_BODY, st.none()))  # None: a removal
BATCHES = st.lists(st.lists(ENTRY, min_size=1, max_size=12), min_size=1, max_size=3)


def entries_of(batches: list[list[tuple]]) -> list[list[Entry]]:
    stream = Stream()
    return [
        [stream.removal(name) if body is None else stream.report(name, **body) for name, body in batch]
        for batch in batches
    ]


def reset_fleet() -> None:
    Machine.objects.all().delete()
    RemovedMachine.objects.all().delete()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(BATCHES)
def test_a_batch_leaves_what_applying_its_entries_one_by_one_leaves(batches):
    """Whatever mix of reports (with and without seq or sent_at), late ones, removals and
    packages, and however they fall into ticks, plus each batch delivered twice."""
    reset_fleet()
    batched = entries_of(batches)
    for entries in batched:
        fleet.apply_entries(entries, NOW)
        fleet.apply_entries(entries, NOW)  # a worker died before acknowledging them
    coalesced = fleet_state()

    reset_fleet()
    for entry in (entry for entries in batched for entry in entries):
        fleet.apply_entries([entry], NOW)

    assert coalesced == fleet_state()
