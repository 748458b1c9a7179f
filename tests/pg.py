"""The database the tests run on: SQLite (the default) or PostgreSQL (``TEST_DATABASE=postgres``).

On PostgreSQL every run gets private databases on the server at ``TEST_POSTGRES_URL``
(by default ``postgres://postgres:postgres@127.0.0.1:5432/postgres``: the password .ci/run gives
the role, ignored by a server that trusts loopback): one per process stack
(:func:`private_database_url`), created before its ``release`` and dropped once its processes
have stopped, and one for the ``django_db`` tests, which pytest-django creates and drops under a
name of this run's own (:func:`unit_test_database`). Nothing is shared with another run.

``python -m tests.pg`` exits 0 when the server answers (the Makefile's ``test`` target asks it
before the PostgreSQL pass).
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

SQLITE, POSTGRES = "sqlite", "postgres"
SERVER_URL = os.environ.get("TEST_POSTGRES_URL", "postgres://postgres:postgres@127.0.0.1:5432/postgres")
NAME_PREFIX = "fleetchat_test"


def backend() -> str:
    """Which database this run tests on, from ``TEST_DATABASE``."""
    chosen = os.environ.get("TEST_DATABASE", SQLITE) or SQLITE
    if chosen not in (SQLITE, POSTGRES):
        raise ValueError(f"TEST_DATABASE={chosen!r}: use {SQLITE} or {POSTGRES}")
    return chosen


def url_for(name: str) -> str:
    """The server's URL with its database replaced by ``name``."""
    return urlparse(SERVER_URL)._replace(path=f"/{name}").geturl()


def unique_name() -> str:
    """A database name no other run uses: this process and 48 random bits."""
    return f"{NAME_PREFIX}_{os.getpid()}_{secrets.token_hex(6)}"


def _admin_connection():
    import psycopg

    return psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=3)


def server_problem() -> str | None:
    """Why the server cannot be used for tests, or ``None`` when it can."""
    try:
        with _admin_connection() as connection:
            connection.execute("SELECT 1")
    except Exception as error:  # any failure to connect means no PostgreSQL for this run
        return f"{type(error).__name__}: {error}".strip()
    return None


def create_database(name: str) -> None:
    with _admin_connection() as connection:
        connection.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    """Drop ``name`` even if a killed process left a connection to it (PostgreSQL 13+)."""
    with _admin_connection() as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def private_database_url(workdir: Path) -> Iterator[str]:
    """A ``DATABASE_URL`` for one process stack, empty, gone when the block ends."""
    if backend() == SQLITE:
        yield f"sqlite:///{workdir / 'db.sqlite3'}"
        return
    name = unique_name()
    create_database(name)
    try:
        yield url_for(name)
    finally:
        drop_database(name)


def unit_test_database() -> dict[str, Any]:
    """``settings.DATABASES["default"]`` for the ``django_db`` tests on PostgreSQL, built the way
    ``project/settings.py`` builds it from a ``DATABASE_URL``. pytest-django creates the database
    named in ``TEST`` and drops it at the end of the run (the caller drops it again, forcibly, in
    case a connection was left open)."""
    from project.settings import database_settings

    name = unique_name()
    # Not persistent: a connection kept by the thread that runs Channels' sync code would keep
    # the database busy at the end of the run, and pytest-django could not drop it. The process
    # stacks run with the real DB_CONN_MAX_AGE.
    config = database_settings(url_for(name), conn_max_age=0)
    config["TEST"] = {"NAME": f"{name}_unit"}
    return config


def connections_held(pid: int, database_url: str) -> int:
    """How many connections to ``database_url`` process ``pid`` holds open: TCP connections to the
    server on PostgreSQL, descriptors of the database file on SQLite (not its -wal and -shm)."""
    import psutil

    process = psutil.Process(pid)
    url = urlparse(database_url)
    if url.scheme == "sqlite":
        path = "/" + url.path.lstrip("/")  # sqlite:////abs/path parses as //abs/path
        return sum(1 for opened in process.open_files() if opened.path == path)
    port = url.port or 5432
    return sum(1 for conn in process.net_connections("tcp") if conn.raddr and conn.raddr.port == port)


if __name__ == "__main__":
    problem = server_problem()
    if problem:
        print(f"no PostgreSQL for the tests at {SERVER_URL} ({problem})", file=sys.stderr)
    sys.exit(1 if problem else 0)
