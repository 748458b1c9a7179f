"""The database under the real processes, on SQLite and on PostgreSQL (``TEST_DATABASE``, tests/pg.py).

- Each process holds at most one connection however many requests, handshakes and messages it
  serves (a web process's HTTP requests each run in a thread of their own: project/database_connections.py).
- On PostgreSQL, connections the server dropped are replaced before they are used
  (``CONN_HEALTH_CHECKS``): not one request, handshake or message fails.
- Text PostgreSQL cannot store (a NUL, a username longer than its column) gets the same clear
  answer on both databases, never a 500 or an ``internal_error``.
- Two status workers applying reports of one machine at once never roll it back to the older one.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from datetime import UTC, datetime
from urllib.parse import urlparse

import psutil
import psycopg
import pytest
from django.db import connection, transaction
from websockets.exceptions import InvalidStatus

from project.reportqueue import REPORT, Entry
from project.reports import check_report

from . import pg
from .conftest import make_stack
from .stack import Stack, recv_json, send_json
from .test_login_throttle import Client
from .test_status_integration import TOKEN, report


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url):
    yield from make_stack(tmp_path_factory, redis_url, FLEET_TOKEN=TOKEN)


@pytest.fixture(scope="module")
def session(stack: Stack) -> str:
    stack.create_users("dora")
    return stack.login("dora")


def get(stack: Stack, path: str, session: str | None = None) -> int:
    headers = {"Cookie": f"sessionid={session}"} if session else {}
    with urllib.request.urlopen(
        urllib.request.Request(stack.base_url + path, headers=headers), timeout=10
    ) as answer:
        return answer.status


async def say(stack: Stack, session: str, room: str, text: str) -> dict:
    """Join ``room``, send ``text`` and return what the worker answered with."""
    async with stack.connect(f"/ws/chat/{room}/", session) as ws:
        assert (await recv_json(ws))["type"] == "chat.history"
        await send_json(ws, {"type": "chat.message", "message": text, "client_id": text})
        return await recv_json(ws)


def held_by_process(stack: Stack) -> dict[str, int]:
    """Connections to the stack's database, per process (uvicorn's worker processes apart)."""
    database_url = stack.env["DATABASE_URL"]
    held = {}
    for label, popen in stack.processes.items():
        parent = psutil.Process(popen.pid)
        for process in [parent, *parent.children(recursive=True)]:
            held[f"{label}:{process.pid}"] = pg.connections_held(process.pid, database_url)
    return held


@pytest.mark.integration
async def test_no_process_holds_more_than_one_connection_however_much_it_serves(stack, session):
    for _ in range(100):
        assert get(stack, "/readyz") == 200
        assert get(stack, "/api/status", session) == 200
        assert get(stack, "/accounts/login/") == 200
    for n in range(30):
        assert (await say(stack, session, f"room-{n}", f"m{n}"))["type"] == "chat.message"

    held = held_by_process(stack)
    assert all(count <= 1 for count in held.values()), held
    # The worker answered every message; the web processes looked sessions up.
    assert sum(held.values()) >= 2, held


def drop_server_connections(database_url: str) -> int:
    """What a database restart or a failover does to every process: its connections are gone."""
    with psycopg.connect(pg.SERVER_URL, autocommit=True) as admin:
        return len(
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (urlparse(database_url).path.lstrip("/"),),
            ).fetchall()
        )


@pytest.mark.integration
async def test_connections_the_server_dropped_are_replaced_before_they_fail_anything(stack, session):
    if pg.backend() != pg.POSTGRES:
        pytest.skip("SQLite has no server that could drop a connection (TEST_DATABASE=postgres runs this)")
    assert (await say(stack, session, "before", "before"))["type"] == "chat.message"
    assert get(stack, "/api/status", session) == 200
    assert drop_server_connections(stack.env["DATABASE_URL"]) >= 2

    # The worker's connection, then a web process's handshake thread's, each used once more.
    answer = await say(stack, session, "after", "after")
    assert (answer["type"], answer.get("message")) == ("chat.message", "after"), answer
    assert get(stack, "/readyz") == 200
    assert "Traceback" not in stack.read_log("worker") + stack.read_log("web")


@pytest.mark.integration
async def test_text_postgresql_cannot_store_gets_a_clear_answer_on_either_database(stack, session):
    login = Client(stack, "203.0.113.50")
    for username in ("u" * 300, "nul\x00name"):
        status, page = login.log_in(username, "wrong-password")
        assert (status, login.session) == (200, None) and 'name="username"' in page  # the form again

    nul_cookie = '"\\000abcdefghijklmnopqrstuvwxyz0123"'  # a quoted cookie value: \000 is a NUL
    assert get(stack, "/accounts/login/", nul_cookie) == 200
    with pytest.raises(InvalidStatus) as refused:
        await stack.connect("/ws/chat/lobby/", nul_cookie)
    assert refused.value.response.status_code == 403  # no session: anonymous, as with any unknown key

    async with stack.connect("/ws/chat/nul/", session) as ws:
        assert (await recv_json(ws))["type"] == "chat.history"
        await send_json(ws, {"type": "chat.message", "message": "a\x00b", "client_id": "nul-1"})
        error = await recv_json(ws)
        assert (error["type"], error["code"]) == ("error", "invalid_message"), error

    status, answer = report(
        stack,
        "node-nul",
        {"state": "ready", "software": [{"name": "pkg\x00", "state": "done", "percent": 100}]},
    )
    assert (status, answer["error"]) == (400, "invalid_report"), answer
    assert "Traceback" not in stack.read_log("web") + stack.read_log("worker")


# --- Two status workers at once, against the database itself ---------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def report_entry(entry_id: str, state: str) -> Entry:
    return Entry(entry_id, REPORT, "node-1", check_report("node-1", {"state": state, "progress": 10}))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("known", [True, False], ids=["known machine", "new machine"])
def test_an_older_report_applied_at_the_same_time_does_not_roll_a_machine_back(known):
    from workers import fleet
    from workers.models import Machine

    if connection.vendor == "sqlite":
        pytest.skip(
            "the django_db tests' SQLite is in memory with a shared cache, where a second writer fails "
            "at once instead of waiting; the processes' database file takes writers one at a time"
        )
    if known:
        fleet.apply_entries([report_entry("1-0", "pending")], NOW)
    newer_applied, commit_newer = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def apply_newer() -> None:
        # A worker holding a later report of the machine, its transaction not yet committed.
        try:
            with transaction.atomic():
                fleet.apply_entries([report_entry("3-0", "ready")], NOW)
                newer_applied.set()
                commit_newer.wait(10)
        finally:
            connection.close()

    def apply_older() -> None:
        # Another worker, with an earlier report (claimed from a worker that died, say).
        newer_applied.wait(10)
        try:
            fleet.apply_entries([report_entry("2-0", "provisioning")], NOW)
        except BaseException as error:
            failures.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=apply_newer), threading.Thread(target=apply_older)]
    for thread in threads:
        thread.start()
    assert newer_applied.wait(10)
    time.sleep(1.0)  # the older one is at the database by now, waiting for the newer's locks
    commit_newer.set()
    for thread in threads:
        thread.join(30)

    assert not failures
    machine = Machine.objects.get(name="node-1")
    assert (machine.state, machine.report_id) == ("ready", "3-0")
