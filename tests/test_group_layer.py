"""GROUP_LAYER=pubsub: broadcasts ride channels_redis' pub/sub layer, worker channels the core layer."""

from __future__ import annotations

import pytest

from project import protocol

from .conftest import make_stack
from .stack import recv_until, send_json

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pubsub_stack(tmp_path_factory, redis_url):
    yield from make_stack(tmp_path_factory, redis_url, GROUP_LAYER="pubsub", ALLOW_ANONYMOUS="1")


async def test_chat_broadcast_reaches_every_member_once(pubsub_stack):
    # Several sockets, so that both web processes are likely to hold some of them.
    members = [await pubsub_stack.connect("/ws/chat/pubsub/").__aenter__() for _ in range(4)]
    try:
        for ws in members:
            await recv_until(ws, protocol.CHAT_HISTORY)
        await send_json(members[0], {"type": "chat.message", "message": "over pub/sub", "client_id": "ps-1"})
        received = [await recv_until(ws, protocol.CHAT_MESSAGE) for ws in members]
        assert {frame["message"] for frame in received} == {"over pub/sub"}
        assert len({frame["id"] for frame in received}) == 1
    finally:
        for ws in members:
            await ws.close()


async def test_status_updates_arrive_in_sequence(pubsub_stack):
    pubsub_stack.create_users("dora")
    session = pubsub_stack.login("dora")
    async with pubsub_stack.connect("/ws/status/", session) as ws:
        snapshot = await recv_until(ws, protocol.STATUS_SNAPSHOT)
        seqs = []
        while len(seqs) < 3:
            update = await recv_until(ws, protocol.STATUS_UPDATE, timeout_s=5)
            if update["seq"] > snapshot["seq"]:
                seqs.append(update["seq"])
        assert seqs == list(range(seqs[0], seqs[0] + 3))
