"""Shared fixtures: a private Redis server per test session and the real process stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from project import embedded_redis

from . import csp
from .stack import Stack


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
    stack = Stack(Path(tmp_path_factory.mktemp("stack")), redis_url, env)
    stack.start_all(instances)
    try:
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
