"""Redis behind Sentinel: the master dies, a replica is promoted, the service carries on.

Three redis-servers (a master, two replicas) and three Sentinels, all started here on free
loopback ports; the real Procfile processes find the master through the Sentinels
(``REDIS_SENTINELS``). Two chat clients talk while the master is SIGKILLed, and a dashboard
watches the status stream.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from .chatclient import assert_exactly_once_in_order, chat_stack, conversation
from .faults import StreamWatch
from .redisfarm import MASTER_NAME, SentinelSet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAILOVER_MAX_GAP_S = 10.0


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory):
    farm = SentinelSet(Path(tmp_path_factory.mktemp("sentinels")))
    yield farm
    farm.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, sentinels):
    yield from chat_stack(
        tmp_path_factory,
        "redis://127.0.0.1:1/0",  # only its database number is read
        REDIS_SENTINELS=sentinels.addresses,
        REDIS_SENTINEL_MASTER=MASTER_NAME,
    )


async def test_the_service_carries_on_after_the_master_fails_over(stack, sentinels):
    sessions = {name: stack.login(name) for name in ("alice", "bob")}
    old_master = sentinels.master_port()
    promoted = []
    watch = StreamWatch()

    def fault(clients):
        sentinels.master.kill()
        promoted.append(sentinels.wait_for_new_master(old_master))

    async with stack.connect("/ws/status/", sessions["alice"]) as dashboard:
        following = asyncio.create_task(watch.follow(dashboard))
        seen = await conversation(stack, sessions, fault)
        fault_over = time.monotonic()
        await asyncio.sleep(3)
        following.cancel()

    assert sentinels.master_port() != old_master
    assert_exactly_once_in_order(stack, seen)
    assert seen["longest_gap_s"] <= FAILOVER_MAX_GAP_S, (seen, promoted)
    assert watch.updates(since=fault_over), "the status stream did not come back after the failover"
    for name in ("worker", "worker.2", "scheduler", "web"):
        assert stack.processes[name].poll() is None, f"{name} exited:\n{stack.read_log(name)[-2000:]}"
