"""Consumers with Channels' communicators: they forward to workers and relay, nothing more."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from consumers.routing import websocket_urlpatterns
from project import protocol

ALICE = SimpleNamespace(is_authenticated=True, pk=7, get_username=lambda: "alice")
NOBODY = SimpleNamespace(is_authenticated=False, pk=None)

# No django_db mark: pytest-django fails any test that touches the database, so these
# also prove that the consumers never do.


def communicator(path: str, user) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    comm.scope["user"] = user
    return comm


async def test_connect_joins_the_room_and_asks_the_worker_for_history(channel_layer):
    comm = communicator("/ws/chat/ops/", ALICE)
    connected, _ = await comm.connect()
    assert connected

    join = await channel_layer.receive(protocol.CHAT_WORKER)
    assert join["type"] == "chat.join"
    assert (join["room"], join["user"], join["user_id"]) == ("ops", "alice", 7)

    await channel_layer.send(join["reply_channel"], protocol.relay({"type": "chat.history", "messages": []}))
    assert json.loads(await comm.receive_from()) == {"type": "chat.history", "messages": []}
    await comm.disconnect()


async def test_client_frame_is_forwarded_whole(channel_layer):
    comm = communicator("/ws/chat/", ALICE)
    await comm.connect()
    await channel_layer.receive(protocol.CHAT_WORKER)

    await comm.send_to(text_data='{"message": "hi", "client_id": "k"}')
    forwarded = await channel_layer.receive(protocol.CHAT_WORKER)
    assert forwarded["type"] == "chat.message"
    assert forwarded["frame"] == {"type": "chat.message", "message": "hi", "client_id": "k"}
    assert forwarded["room"] == "lobby"
    await comm.disconnect()


async def test_group_broadcast_is_relayed_verbatim(channel_layer):
    comm = communicator("/ws/chat/ops/", ALICE)
    await comm.connect()
    frame = {"type": "chat.message", "id": 1, "message": "<b>x</b>"}
    await channel_layer.group_send(protocol.chat_group("ops"), protocol.relay(frame))
    assert await comm.receive_from() == protocol.encode(frame)
    await comm.disconnect()


async def test_bad_frame_is_answered_by_the_consumer_without_reaching_a_worker(channel_layer):
    comm = communicator("/ws/chat/ops/", ALICE)
    await comm.connect()
    await channel_layer.receive(protocol.CHAT_WORKER)

    await comm.send_to(text_data="{oops")
    error = json.loads(await comm.receive_from())
    assert error["code"] == "invalid_json"
    assert await comm.receive_nothing()
    assert (
        channel_layer.channels.get(protocol.CHAT_WORKER) is None
        or channel_layer.channels[protocol.CHAT_WORKER].empty()
    )
    await comm.disconnect()


async def test_anonymous_is_refused_before_accept(channel_layer):
    comm = communicator("/ws/chat/", NOBODY)
    connected, _ = await comm.connect()
    assert not connected
    await comm.disconnect()


@pytest.mark.parametrize("path", ["/ws/chat/a b/", "/ws/elsewhere/"])
async def test_unrouted_path_is_refused(channel_layer, path):
    comm = communicator(path, ALICE)
    connected, _ = await comm.connect()
    assert not connected
    await comm.disconnect()
