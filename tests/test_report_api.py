"""Reports over the real processes: the agent's own order, the batch endpoint, and coalescing.

web, worker and scheduler from the Procfile against a private Redis. What a report did is read
back through ``/api/status`` (what a dashboard gets); how many times the status worker wrote a
machine's row is counted by a trigger in the stack's own database.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlparse

import pytest

from .conftest import make_stack
from .stack import Stack
from .test_status_integration import http, snapshot_over_http

pytestmark = pytest.mark.integration

TOKEN = "report-api-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
SEEN_WITHIN_S = 10


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url):
    yield from make_stack(tmp_path_factory, redis_url, FLEET_TOKEN=TOKEN)


@pytest.fixture(scope="module")
def session(stack: Stack) -> str:
    stack.create_users("operator")
    return stack.login("operator")


def report(stack: Stack, name: str, body: dict) -> int:
    return http(stack, "POST", f"/api/machines/{name}/report", json.dumps(body).encode(), AUTH)[0]


def batch(stack: Stack, items, raw: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    return http(
        stack,
        "POST",
        "/api/reports",
        raw if raw is not None else json.dumps(items).encode(),
        AUTH if headers is None else headers,
    )


def fleet(stack: Stack, session: str) -> tuple[dict[str, dict], dict]:
    """The machines by name and the summary, as ``/api/status`` shows them."""
    snapshot = snapshot_over_http(stack, session)
    return {machine["name"]: machine for machine in snapshot["machines"]}, snapshot["summary"]


def settled(stack: Stack, session: str) -> tuple[dict[str, dict], dict]:
    """The fleet once everything queued so far is applied: the worker applies reports in stream
    order, so once a marker reported now is visible, everything queued before it is too."""
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    assert report(stack, marker, {"state": "ready"}) == 202
    deadline = time.monotonic() + SEEN_WITHIN_S
    while True:
        machines, summary = fleet(stack, session)
        if marker in machines:
            return machines, summary
        assert time.monotonic() < deadline, "the marker report never arrived"
        time.sleep(0.1)


def late_reports(stack: Stack, session: str) -> int:
    return settled(stack, session)[1]["late_reports"]


def machine_writes(stack: Stack) -> Callable[[str], int]:
    """Count every insert and update of a machine's row from now on, in the stack's database;
    a function giving the count for one machine."""
    url = urlparse(stack.env["DATABASE_URL"])
    if url.scheme == "sqlite":
        connection = sqlite3.connect(url.path, timeout=20, isolation_level=None)
        connection.executescript(
            "CREATE TABLE IF NOT EXISTS machine_writes (name TEXT);"
            "CREATE TRIGGER IF NOT EXISTS machine_inserted AFTER INSERT ON workers_machine"
            " BEGIN INSERT INTO machine_writes VALUES (NEW.name); END;"
            "CREATE TRIGGER IF NOT EXISTS machine_updated AFTER UPDATE ON workers_machine"
            " BEGIN INSERT INTO machine_writes VALUES (NEW.name); END;"
        )
        count = "SELECT count(*) FROM machine_writes WHERE name = ?"
    else:
        import psycopg

        connection = psycopg.connect(stack.env["DATABASE_URL"], autocommit=True)
        connection.execute(
            "CREATE TABLE IF NOT EXISTS machine_writes (name text);"
            "CREATE OR REPLACE FUNCTION log_machine_write() RETURNS trigger AS $$"
            " BEGIN INSERT INTO machine_writes VALUES (NEW.name); RETURN NEW; END $$ LANGUAGE plpgsql;"
            "CREATE OR REPLACE TRIGGER machine_written AFTER INSERT OR UPDATE ON workers_machine"
            " FOR EACH ROW EXECUTE FUNCTION log_machine_write();"
        )
        count = "SELECT count(*) FROM machine_writes WHERE name = %s"
    return lambda name: connection.execute(count, (name,)).fetchone()[0]


# --- the agent's own order ---------------------------------------------------------------------


def test_a_late_report_does_not_roll_a_machine_back_and_is_counted(stack, session):
    late_before = late_reports(stack, session)
    assert report(stack, "ordered-01", {"state": "ready", "progress": 100, "seq": 5}) == 202
    assert report(stack, "ordered-01", {"state": "provisioning", "progress": 10, "seq": 3}) == 202

    machines, summary = settled(stack, session)

    assert (machines["ordered-01"]["state"], machines["ordered-01"]["progress"]) == ("ready", 100)
    assert summary["late_reports"] == late_before + 1


def test_a_late_report_is_ignored_even_in_a_later_tick(stack, session):
    assert report(stack, "ordered-02", {"state": "ready", "progress": 100, "seq": 5}) == 202
    late_before = late_reports(stack, session)  # seq 5 is stored by now

    assert report(stack, "ordered-02", {"state": "provisioning", "progress": 10, "seq": 4}) == 202
    machines, summary = settled(stack, session)

    assert machines["ordered-02"]["state"] == "ready"
    assert summary["late_reports"] == late_before + 1


def test_sent_at_orders_reports_like_seq(stack, session):
    late_before = late_reports(stack, session)
    newer = {"state": "failed", "progress": 70, "sent_at": "2026-11-28T12:00:01.500+01:00"}
    older = {"state": "provisioning", "progress": 60, "sent_at": "2026-11-28T11:00:01.499Z"}

    assert report(stack, "clocked-01", newer) == 202
    assert report(stack, "clocked-01", older) == 202
    machines, summary = settled(stack, session)

    assert machines["clocked-01"]["state"] == "failed"
    assert summary["late_reports"] == late_before + 1


def test_without_seq_or_sent_at_arrival_order_stands(stack, session):
    assert report(stack, "unordered-01", {"state": "ready", "progress": 100}) == 202
    assert report(stack, "unordered-01", {"state": "provisioning", "progress": 10}) == 202

    machines, _ = settled(stack, session)

    assert (machines["unordered-01"]["state"], machines["unordered-01"]["progress"]) == ("provisioning", 10)


@pytest.mark.parametrize(
    "order",
    [
        {"seq": -1},
        {"seq": 1.5},
        {"seq": "7"},
        {"sent_at": "2026-11-28T12:00:00"},
        {"sent_at": "yesterday"},
        {"sent_at": 1764331200},
    ],
)
def test_a_bad_seq_or_sent_at_is_400_naming_it(stack, order):
    status, answer = http(
        stack,
        "POST",
        "/api/machines/badorder-01/report",
        json.dumps({"state": "ready", **order}).encode(),
        AUTH,
    )

    assert (status, answer["error"], list(answer["errors"])) == (400, "invalid_report", list(order))


# --- the batch endpoint ---------------------------------------------------------------------------


def test_a_batch_queues_its_good_items_and_names_the_bad_ones(stack, session):
    items = [
        {"name": "batch-good-01", "report": {"state": "provisioning", "progress": 30}},
        {
            "name": "batch-bad-01",
            "report": {
                "state": "ready",
                "software": [
                    {"name": "nginx", "state": "done", "percent": 100},
                    {"name": "redis", "state": "done", "percent": 101},
                ],
            },
        },
        {"name": "batch-good-02", "report": {"state": "ready", "seq": 9}},
        "not an object",
        {"name": "batch bad 02", "report": {"state": "ready"}},
        {"name": "batch-bad-03", "report": {"state": "ready"}, "comment": "unknown field"},
        {"name": "batch-bad-04"},
    ]

    status, answer = batch(stack, items)
    machines, _ = settled(stack, session)

    assert status == 202
    assert (answer["status"], answer["accepted"], answer["refused"]) == ("accepted", 2, 5)
    errors = {error["index"]: error for error in answer["errors"]}
    assert list(errors) == [1, 3, 4, 5, 6]
    assert (errors[1]["name"], errors[1]["error"], list(errors[1]["errors"])) == (
        "batch-bad-01",
        "invalid_report",
        ["software[1].percent"],
    )
    assert (errors[3]["name"], list(errors[3]["errors"])) == (None, ["item"])
    assert list(errors[4]["errors"]) == ["name"]
    assert list(errors[5]["errors"]) == ["item"]
    assert list(errors[6]["errors"]) == ["report"]
    assert machines["batch-good-01"]["state"] == "provisioning"
    assert machines["batch-good-02"]["state"] == "ready"
    assert not {"batch-bad-01", "batch bad 02", "batch-bad-03", "batch-bad-04"} & machines.keys()


def test_a_nul_in_one_item_refuses_that_item_alone(stack, session):
    items = [
        {"name": "nul-free-01", "report": {"state": "ready"}},
        {
            "name": "nul-held-01",
            "report": {"state": "ready", "software": [{"name": "pkg\x00", "state": "done", "percent": 100}]},
        },
    ]

    status, answer = batch(stack, items)
    machines, _ = settled(stack, session)

    assert (status, answer["accepted"], answer["refused"]) == (202, 1, 1)
    assert answer["errors"][0]["index"] == 1
    assert answer["errors"][0]["errors"]["report"] == ["must not contain NUL characters (\\u0000)"]
    assert "nul-free-01" in machines and "nul-held-01" not in machines


def test_a_bad_item_leaves_its_machine_as_it_was(stack, session):
    before = {"state": "provisioning", "software": [{"name": "nginx", "state": "installing", "percent": 10}]}
    assert report(stack, "halfway-01", before) == 202
    bad = {
        "state": "ready",
        "progress": 100,
        "software": [
            {"name": "nginx", "state": "done", "percent": 100},
            {"name": "redis", "state": "done", "percent": "all"},
        ],
    }

    status, answer = batch(stack, [{"name": "halfway-01", "report": bad}])
    machines, _ = settled(stack, session)

    assert (status, answer["error"], answer["accepted"]) == (400, "invalid_report", 0)
    assert machines["halfway-01"]["state"] == "provisioning"
    assert machines["halfway-01"]["software"] == [{"name": "nginx", "state": "installing", "percent": 10}]


@pytest.mark.parametrize(
    "raw, error",
    [
        (b"{nope", "invalid_batch"),
        (b'{"name": "a", "report": {"state": "ready"}}', "invalid_batch"),
        (b"[]", "invalid_batch"),
    ],
)
def test_a_batch_that_is_not_a_list_of_items_is_400(stack, raw, error):
    status, answer = batch(stack, None, raw=raw)

    assert (status, answer["error"]) == (400, error)
    assert "body" in answer["errors"]


def test_a_batch_over_1000_items_is_413_and_queues_nothing(stack, session):
    items = [{"name": f"crowd-{n:04d}", "report": {"state": "pending"}} for n in range(1001)]

    status, answer = batch(stack, items)
    machines, _ = settled(stack, session)

    assert (status, answer["error"]) == (413, "too_large")
    assert not any(name.startswith("crowd-") for name in machines)


def test_a_batch_over_2_mib_is_413(stack):
    packages = [{"name": f"p{n:03d}-" + "x" * 90, "state": "queued", "percent": 0} for n in range(200)]
    items = [
        {"name": f"heavy-{n:03d}", "report": {"state": "pending", "software": packages}} for n in range(100)
    ]
    raw = json.dumps(items).encode()
    assert len(raw) > 2 * 1024 * 1024

    status, answer = batch(stack, None, raw=raw)

    assert (status, answer["error"]) == (413, "too_large")


@pytest.mark.parametrize(
    "headers, method, code",
    [
        ({"Content-Type": "application/json"}, "POST", 401),
        ({**AUTH, "Authorization": "Bearer wrong-token"}, "POST", 401),
        (AUTH, "GET", 405),
    ],
)
def test_a_batch_needs_the_token_and_post(stack, headers, method, code):
    status, _ = http(stack, method, "/api/reports", b"[]" if method == "POST" else None, headers)

    assert status == code


# --- coalescing ---------------------------------------------------------------------------------


def test_reports_for_one_machine_in_one_tick_are_one_write_and_the_highest_seq_wins(stack, session):
    writes = machine_writes(stack)
    late_before = late_reports(stack, session)
    seqs = list(range(1, 51))
    random.Random(11).shuffle(seqs)
    items = [
        {
            "name": "coalesced-01",
            "report": {
                "state": "ready" if seq == 50 else "provisioning",
                "progress": seq * 2,
                "software": [{"name": f"pkg-{seq % 5}", "state": "installing", "percent": seq}],
                "seq": seq,
            },
        }
        for seq in seqs
    ]
    late = sum(seq < max(seqs[:index]) for index, seq in enumerate(seqs) if index)

    assert batch(stack, items)[0] == 202  # queued at once: one tick reads them all
    machines, summary = settled(stack, session)

    machine = machines["coalesced-01"]
    assert (machine["state"], machine["progress"]) == ("ready", 100)
    # Packages are upserted by name by every report applied, in order; late ones change nothing.
    applied = [seq for index, seq in enumerate(seqs) if seq >= max(seqs[: index + 1])]
    expected = {f"pkg-{seq % 5}": seq for seq in applied}
    assert {p["name"]: p["percent"] for p in machine["software"]} == expected
    assert summary["late_reports"] == late_before + late
    assert writes("coalesced-01") == 1


def test_without_seq_the_last_report_of_a_tick_wins_in_one_write(stack, session):
    writes = machine_writes(stack)
    items = [{"name": "coalesced-02", "report": {"state": "provisioning", "progress": n}} for n in range(30)]
    items.append({"name": "coalesced-02", "report": {"state": "failed", "progress": 55.5}})

    assert batch(stack, items)[0] == 202
    machines, _ = settled(stack, session)

    assert (machines["coalesced-02"]["state"], machines["coalesced-02"]["progress"]) == ("failed", 55.5)
    assert writes("coalesced-02") == 1
