"""The process-local group fan-out: one layer member per group, every local socket served once."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from consumers.fanout import fanout_for
from consumers.routing import websocket_urlpatterns
from project import protocol

ALICE = SimpleNamespace(is_authenticated=True, pk=7, get_username=lambda: "alice")
ROOM = protocol.chat_group("ops")


async def open_chat(channel_layer) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/chat/ops/")
    comm.scope["user"] = ALICE
    connected, _ = await comm.connect()
    assert connected
    await channel_layer.receive(protocol.CHAT_WORKER)  # the join request
    return comm


async def test_every_local_socket_gets_a_broadcast_once_through_one_group_member(channel_layer):
    first, second = await open_chat(channel_layer), await open_chat(channel_layer)

    frame = {"type": "chat.message", "id": 1, "message": "hi"}
    await channel_layer.group_send(ROOM, protocol.relay(frame))

    assert await first.receive_from() == protocol.encode(frame)
    assert await second.receive_from() == protocol.encode(frame)
    assert await first.receive_nothing() and await second.receive_nothing()
    assert len(channel_layer.groups[ROOM]) == 1
    await first.disconnect()
    await second.disconnect()


async def test_the_group_is_left_with_the_last_local_socket(channel_layer):
    first, second = await open_chat(channel_layer), await open_chat(channel_layer)

    await first.disconnect()
    assert len(channel_layer.groups[ROOM]) == 1
    await second.disconnect()

    assert not channel_layer.groups.get(ROOM)
    assert ROOM not in fanout_for(channel_layer).groups


async def test_a_failing_socket_does_not_cut_the_others_off(channel_layer):
    first, second = await open_chat(channel_layer), await open_chat(channel_layer)
    broken = next(iter(fanout_for(channel_layer).groups[ROOM].sockets))

    async def fail(event):
        raise RuntimeError("socket gone")

    broken.chat_message = fail
    frame = {"type": "chat.message", "id": 2, "message": "still here"}
    await channel_layer.group_send(ROOM, protocol.relay(frame))

    heard = [not await comm.receive_nothing(0.2) for comm in (first, second)]
    assert heard.count(True) == 1
    healthy = first if heard[0] else second
    assert await healthy.receive_from() == protocol.encode(frame)
    await first.disconnect()
    await second.disconnect()


async def test_a_group_left_while_redis_was_away_is_left_once_it_answers(channel_layer, monkeypatch):
    comm = await open_chat(channel_layer)
    fanout = fanout_for(channel_layer)
    discard = channel_layer.group_discard

    async def away(group, channel):
        raise ConnectionError("Redis away")

    monkeypatch.setattr(channel_layer, "group_discard", away)
    await comm.disconnect()
    assert len(channel_layer.groups[ROOM]) == 1, "the membership should have outlived the failed leave"

    monkeypatch.setattr(channel_layer, "group_discard", discard)
    fanout.layer_failed()  # what the process does when it sees the layer again
    for _ in range(100):
        if not channel_layer.groups.get(ROOM):
            break
        await asyncio.sleep(0.01)
    assert not channel_layer.groups.get(ROOM)
    assert fanout.stale == []
