"""Shared fixtures: a private Redis server per test session, the database (tests/pg.py) and the
real process stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from project import embedded_redis

from . import csp, pg
from .stack import Stack


def pytest_report_header(config: pytest.Config) -> str:
    return f"database: {pg.backend()}" + (f" at {pg.SERVER_URL}" if pg.backend() == pg.POSTGRES else "")


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> Iterator[None]:
    """On PostgreSQL, the ``django_db`` tests' database: a private one, created and dropped by
    pytest-django. Django is set up before any conftest runs, so the settings are switched here,
    before the first connection is made."""
    if pg.backend() != pg.POSTGRES:
        yield
        return
    problem = pg.server_problem()
    if problem:
        pytest.exit(f"TEST_DATABASE=postgres but {pg.SERVER_URL} cannot be used: {problem}", returncode=4)
    from django.conf import settings
    from django.db import connections

    default = settings.DATABASES["default"]
    # In place, with Django's defaults filled in again: the connection handler holds this dict.
    default.clear()
    default.update(pg.unit_test_database())
    connections.configure_settings(settings.DATABASES)
    for connection in connections.all(initialized_only=True):  # none, unless a plugin queried
        connection.close()
        del connections[connection.alias]
    yield
    pg.drop_database(default["TEST"]["NAME"])


@pytest.fixture(autouse=True)
def no_csp_violations() -> Iterator[None]:
    """A test fails if a page it opened in Chromium broke the Content-Security-Policy (tests/csp.py)."""
    yield from csp.fail_on_violations()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server that only this test session uses, on a free loopback port."""
    server, url = embedded_redis.start(tmp_path_factory.mktemp("redis"))
    yield url
    server.terminate()
    server.wait(timeout=10)


def make_stack(
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    instances: dict[str, int] | None = None,
    flush: bool = True,
    **env: str,
) -> Iterator[Stack]:
    # Stacks in one session run one after another; each starts from an empty Redis
    # (``flush=False`` for a Redis the test made for this stack alone, or one behind Sentinel).
    if flush:
        redis.Redis.from_url(redis_url).flushall()
    # Tests open sockets as one user far faster than a person does; tests/test_fair_shares.py
    # sets the per-user join rate it tests.
    env = {"JOINS_PER_USER_PER_S": "1000", **env}
    workdir = Path(tmp_path_factory.mktemp("stack"))
    with pg.private_database_url(workdir) as database_url:
        stack = Stack(workdir, redis_url, {"DATABASE_URL": database_url, **env})
        try:
            stack.start_all(instances)
            yield stack
        finally:
            stack.stop_all()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    """web + worker + scheduler from the Procfile, with small chat limits so tests stay fast."""
    yield from make_stack(
        tmp_path_factory, redis_url, CHAT_RATE_LIMIT_COUNT="5", CHAT_RATE_LIMIT_WINDOW_S="3"
    )


TEST_LEASE_TOKEN = 1


def lead(client: redis.Redis, token: int) -> None:
    """Make ``token`` the scheduler lease's, as a leading scheduler would hold it."""
    from project import keys

    client.set(keys.SCHEDULER_LEASE, f"test-holder {token}")


@pytest.fixture
def leading_redis(redis_url) -> Iterator[redis.Redis]:
    """The private Redis, emptied, with a scheduler lease whose token is ``TEST_LEASE_TOKEN``."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    lead(client, TEST_LEASE_TOKEN)
    yield client
    client.close()


@pytest.fixture
def channel_layer(settings, redis_url):
    """An in-memory channel layer for unit tests of consumers and workers.

    What still talks to Redis directly (heartbeats, connection counts) gets the private one.
    """
    from channels.layers import get_channel_layer

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.REDIS_URL = redis_url
    return get_channel_layer()
