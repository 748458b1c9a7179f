"""A small run of the load tool (bench/loadgen.py) against the real stack.

Not a benchmark: 50 clients for 5 s, to prove that the tool and the stack agree on the
books. Every status client sees every ``seq`` once; every chat member sees every message
once. No timing thresholds here; the figures live in docs/performance.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from bench import loadgen
from project import protocol

from .conftest import make_stack
from .stack import Stack

pytestmark = pytest.mark.integration

CLIENTS = 50
SECONDS = 5


@pytest.fixture(scope="module")
def bench_stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    # All members log in as one user, so the per-user limits must allow every sender and socket.
    yield from make_stack(
        tmp_path_factory,
        redis_url,
        CHAT_RATE_LIMIT_COUNT="1000",
        CHAT_RATE_LIMIT_WINDOW_S="1",
        SOCKETS_PER_USER_MAX="100000",
        JOINS_PER_USER_PER_S="100000",
        EDGE_MESSAGES_PER_S="10000",
    )


@pytest.fixture(scope="module")
def session(bench_stack: Stack) -> str:
    bench_stack.create_users("loadgen")
    return bench_stack.login("loadgen")


def test_status_clients_miss_no_seq(bench_stack: Stack, session: str) -> None:
    books = loadgen.run(
        "status", bench_stack.ws_url + "/ws/status/", CLIENTS, SECONDS, processes=2, session=session
    )

    assert (books["connected"], books["failed_handshakes"], books["disconnects"]) == (CLIENTS, 0, 0)
    assert books["frames"] > 0
    assert (books["missed"], books["duplicated"], books["resyncs"], books["server_resyncs"]) == (0, 0, 0, 0)


def test_chat_members_get_every_message_once(bench_stack: Stack, session: str) -> None:
    books = loadgen.run(
        "chat",
        bench_stack.ws_url + "/ws/chat/smoke/",
        CLIENTS,
        SECONDS,
        processes=2,
        session=session,
        senders=5,
        rate=2,
    )

    assert (books["connected"], books["failed_handshakes"], books["disconnects"]) == (CLIENTS, 0, 0)
    assert books["messages_sent"] > 0
    assert (books["lost"], books["duplicated"]) == (0, 0)


def test_the_load_tool_reads_an_update_by_its_head_and_anything_else_whole() -> None:
    ours = protocol.encode(
        {
            "type": "status.update",
            "epoch": "e1",
            "seq": 5,
            "ts": "2026-11-27T16:00:00.001Z",
            "tick_ns": 17,
            "machines": [{"name": "n1"}],
            "removed": [],
        }
    )
    s0 = json.dumps({"type": "status.update", "epoch": "s0", "seq": 3, "tick_ns": 9, "pad": "x" * 10})
    assert loadgen.read_status_frame(ours) == {
        "type": "status.update",
        "epoch": "e1",
        "seq": 5,
        "tick_ns": 17,
        "ts": "2026-11-27T16:00:00.001Z",
    }
    assert loadgen.read_status_frame(s0) == {"type": "status.update", "epoch": "s0", "seq": 3, "tick_ns": 9}
    notice = protocol.encode({"type": "status.resync", "reason": "slow_client", "dropped": 4})
    assert loadgen.read_status_frame(notice)["dropped"] == 4
