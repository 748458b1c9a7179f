"""The database under the real processes, on SQLite and on PostgreSQL (``TEST_DATABASE``, tests/pg.py).

- Each process holds at most one connection however many requests, handshakes and messages it
  serves (a web process's HTTP requests each run in a thread of their own: project/database_connections.py).
- On PostgreSQL, connections the server dropped are replaced before they are used
  (``CONN_HEALTH_CHECKS``): not one request, handshake or message fails.
"""

from __future__ import annotations

import urllib.request
from urllib.parse import urlparse

import psutil
import psycopg
import pytest

from . import pg
from .stack import Stack, recv_json, send_json


@pytest.fixture(scope="module")
def session(stack: Stack) -> str:
    stack.create_users("dora")
    return stack.login("dora")


def get(stack: Stack, path: str, session: str | None = None) -> int:
    headers = {"Cookie": f"sessionid={session}"} if session else {}
    with urllib.request.urlopen(urllib.request.Request(stack.base_url + path, headers=headers), timeout=10) as answer:
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
        return len(admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (urlparse(database_url).path.lstrip("/"),),
        ).fetchall())


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
