"""Machines locked by name until the transaction ends, whether their rows exist yet or not."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connection


def lock_machines(names: Iterable[str]) -> None:
    """Let status workers applying reports of the same machines take turns.

    Two can hold entries of one machine at once (two ticks in flight, or entries claimed from a
    worker that died), and the later must see what the earlier stored. A row lock cannot order
    them for a machine whose row does not exist yet: both insert, and on PostgreSQL the later
    commit wins whatever its report's age (measured: tests/test_database.py). So on PostgreSQL each
    name takes a transaction-level advisory lock (its hash), in name order so that two workers
    cannot deadlock. SQLite runs one write transaction at a time (BEGIN IMMEDIATE) already.
    """
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(name, 0))"
            " FROM (SELECT unnest(%s::text[]) AS name ORDER BY 1) AS names",
            [sorted(set(names))],
        )
