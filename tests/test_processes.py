"""Process-level behaviour: anonymous mode, clean shutdown of the scheduler and the worker."""

from __future__ import annotations

import signal
import time

import pytest
import redis

from project import heartbeats

from .conftest import make_stack
from .stack import recv_json, recv_until, send_json

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def anonymous_stack(tmp_path_factory, redis_url):
    yield from make_stack(tmp_path_factory, redis_url, ALLOW_ANONYMOUS="1")


async def test_allow_anonymous_gives_a_stable_guest_name_per_connection(anonymous_stack):
    async with anonymous_stack.connect("/ws/chat/guests/") as ws:
        await recv_until(ws, "chat.history")
        await send_json(ws, {"message": "first"})
        first = await recv_until(ws, "chat.message")
        await send_json(ws, {"message": "second"})
        second = await recv_until(ws, "chat.message")
    assert first["user"].startswith("guest-")
    assert first["user"] == second["user"]

    async with anonymous_stack.connect("/ws/chat/guests/") as other:
        history = await recv_json(other)
        await send_json(other, {"message": "third"})
        third = await recv_until(other, "chat.message")
    assert [m["user"] for m in history["messages"]] == [first["user"]] * 2
    assert third["user"].startswith("guest-") and third["user"] != first["user"]


def test_a_normal_start_logs_no_warning_and_no_traceback(anonymous_stack):
    """Run after a conversation above: start-up and ordinary traffic are quiet, so that a warning
    in these logs means something (the worker used to open with an asgiref UserWarning)."""
    time.sleep(2)  # a couple of ticks, heartbeats and lease renewals
    for name in ("web", "worker", "scheduler"):
        noisy = [
            line
            for line in anonymous_stack.read_log(name).splitlines()
            if "Warning" in line or " WARNING " in line or " ERROR " in line or "Traceback" in line
        ]
        assert not noisy, f"{name}:\n" + "\n".join(noisy)


def test_scheduler_beats_and_exits_cleanly_on_sigterm(anonymous_stack, redis_url):
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 5
    while client.get(heartbeats.key(heartbeats.SCHEDULER)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert heartbeats.age_s(client.get(heartbeats.key(heartbeats.SCHEDULER))) < 2

    started = time.monotonic()
    returncode = anonymous_stack.stop("scheduler", signal.SIGTERM)
    assert returncode == 0
    assert time.monotonic() - started < 3
    assert "scheduler stopped" in anonymous_stack.read_log("scheduler")
    assert "Traceback" not in anonymous_stack.read_log("scheduler")


def test_scheduler_exits_cleanly_on_sigint(anonymous_stack):
    if "scheduler" in anonymous_stack.processes:  # run alone, the module's stack still has its own
        anonymous_stack.stop("scheduler")
    # The log is appended to: only a start-up line written by this start counts, or the signal
    # would arrive during Django's set-up, before the scheduler handles it (a KeyboardInterrupt).
    earlier_log = len(anonymous_stack.read_log("scheduler"))
    anonymous_stack.start("scheduler")
    deadline = time.monotonic() + 20  # Django's set-up takes seconds on a loaded host
    while "started with jobs" not in anonymous_stack.read_log("scheduler")[earlier_log:]:
        assert time.monotonic() < deadline, "the scheduler never started"
        time.sleep(0.1)
    assert anonymous_stack.stop("scheduler", signal.SIGINT) == 0


def test_scheduler_hands_its_lease_back_on_sigterm(anonymous_stack, redis_url):
    """A deploy does not wait out the lease: the key is gone when the scheduler exits."""
    from project import keys

    anonymous_stack.start("scheduler")
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 5
    while client.get(keys.SCHEDULER_LEASE) is None:
        assert time.monotonic() < deadline, "the scheduler never took the lease"
        time.sleep(0.1)
    assert anonymous_stack.stop("scheduler", signal.SIGTERM) == 0
    assert client.get(keys.SCHEDULER_LEASE) is None


async def test_worker_finishes_what_it_holds_and_exits_0_on_sigterm(anonymous_stack):
    """SIGTERM while a chat message is on its way: it is stored and answered, then the worker
    exits 0; another worker started afterwards serves the room."""
    async with anonymous_stack.connect("/ws/chat/deploys/") as ws:
        await recv_until(ws, "chat.history")
        await send_json(ws, {"message": "in flight", "client_id": "deploy-1"})
        started = time.monotonic()
        returncode = anonymous_stack.stop("worker", signal.SIGTERM)
        assert (returncode, time.monotonic() - started < 5) == (0, True)
        log = anonymous_stack.read_log("worker")
        assert "worker stopped" in log and "Traceback" not in log
        anonymous_stack.start("worker")
        await send_json(ws, {"message": "in flight", "client_id": "deploy-1"})  # as chat.js resends
        echoed = await recv_until(ws, "chat.message", timeout_s=10)
    assert (echoed["message"], echoed["client_id"]) == ("in flight", "deploy-1")
