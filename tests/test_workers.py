"""The chat worker with Channels' ApplicationCommunicator and an in-memory layer."""

from __future__ import annotations

import json

import pytest
from channels.testing import ApplicationCommunicator

from project import protocol
from workers.chat import ChatWorker
from workers.models import Message

pytestmark = pytest.mark.django_db(transaction=True)


class Harness:
    def __init__(self, layer, reply_channel: str) -> None:
        self.layer = layer
        self.reply_channel = reply_channel
        self.app = ApplicationCommunicator(
            ChatWorker.as_asgi(), {"type": "channel", "channel": protocol.CHAT_WORKER}
        )

    async def send(self, frame: dict, user: str = "alice", room: str = "ops") -> None:
        await self.app.send_input(
            {
                "type": frame["type"],
                "frame": frame,
                "room": room,
                "user": user,
                "user_id": None,
                "reply_channel": self.reply_channel,
            }
        )

    async def reply(self) -> dict:
        return json.loads((await self.layer.receive(self.reply_channel))["text"])

    async def broadcast(self, group_channel: str) -> dict:
        return json.loads((await self.layer.receive(group_channel))["text"])


@pytest.fixture
async def worker(channel_layer):
    reply_channel = await channel_layer.new_channel()
    for room in ("ops", "elsewhere"):
        await channel_layer.group_add(protocol.chat_group(room), reply_channel)
    harness = Harness(channel_layer, reply_channel)
    yield harness
    harness.app.stop()


async def test_message_is_persisted_then_broadcast(worker):
    await worker.send({"type": "chat.message", "message": " hi ", "client_id": "a1"})
    frame = await worker.reply()
    assert (frame["type"], frame["message"], frame["user"], frame["client_id"]) == (
        "chat.message",
        "hi",
        "alice",
        "a1",
    )
    stored = await Message.objects.aget(pk=frame["id"])
    assert stored.body == "hi"


async def test_invalid_message_is_answered_and_nothing_is_stored(worker):
    await worker.send({"type": "chat.message", "message": ""})
    assert (await worker.reply())["code"] == "invalid_message"
    assert await Message.objects.acount() == 0


async def test_resend_answers_with_the_original(worker):
    await worker.send({"type": "chat.message", "message": "x", "client_id": "same"})
    original = await worker.reply()
    await worker.send({"type": "chat.message", "message": "x", "client_id": "same"})
    assert await worker.reply() == original
    assert await Message.objects.acount() == 1


async def test_same_client_id_from_another_user_is_a_new_message(worker):
    await worker.send({"type": "chat.message", "message": "x", "client_id": "same"})
    await worker.send({"type": "chat.message", "message": "x", "client_id": "same"}, user="bob")
    first, second = await worker.reply(), await worker.reply()
    assert first["id"] != second["id"]


async def test_rate_limit(worker, settings):
    settings.CHAT_RATE_LIMIT_COUNT = 2
    for text in ("a", "b"):
        await worker.send({"type": "chat.message", "message": text})
        await worker.reply()
    await worker.send({"type": "chat.message", "message": "c"})
    error = await worker.reply()
    assert error["code"] == "rate_limited"
    assert 0 < error["retry_after"] <= settings.CHAT_RATE_LIMIT_WINDOW_S
    await worker.send({"type": "chat.message", "message": "d"}, room="elsewhere")
    # Another room has its own budget.
    assert (await worker.reply())["message"] == "d"


async def test_join_history_is_the_last_fifty_oldest_first(worker):
    await Message.objects.abulk_create(
        [Message(room="ops", offset=i + 1, author="bob", body=f"m{i}") for i in range(55)]
    )
    await worker.send({"type": "chat.join"})
    history = await worker.reply()
    assert len(history["messages"]) == 50
    assert history["messages"][0]["message"] == "m5"
    assert history["messages"][-1]["message"] == "m54"
    assert history["truncated"] is True


async def test_resume_is_capped_at_500_and_says_so(worker):
    await Message.objects.abulk_create(
        [Message(room="ops", offset=i + 1, author="bob", body=f"m{i}") for i in range(502)]
    )
    first_id = (await Message.objects.order_by("id").afirst()).pk
    await worker.send({"type": "chat.resume", "after_id": first_id})
    resumed = await worker.reply()
    assert len(resumed["messages"]) == 500
    assert resumed["messages"][0]["id"] == first_id + 1
    assert resumed["truncated"] is True


async def test_offsets_are_contiguous_per_room(worker):
    for room, text in (("ops", "a"), ("elsewhere", "b"), ("ops", "c"), ("ops", "d")):
        await worker.send({"type": "chat.message", "message": text}, room=room)
    frames = [await worker.reply() for _ in range(4)]
    assert [(f["room"], f["offset"]) for f in frames] == [
        ("ops", 1),
        ("elsewhere", 1),
        ("ops", 2),
        ("ops", 3),
    ]


async def test_resume_after_an_offset_gives_the_rest_of_the_room_in_offset_order(worker):
    for text in ("a", "b", "c"):
        await worker.send({"type": "chat.message", "message": text})
        await worker.reply()
    await worker.send({"type": "chat.message", "message": "other room"}, room="elsewhere")
    await worker.reply()

    await worker.send({"type": "chat.resume", "after_offset": 1})
    resumed = await worker.reply()

    assert [(m["offset"], m["message"]) for m in resumed["messages"]] == [(2, "b"), (3, "c")]
    assert (resumed["kind"], resumed["truncated"]) == ("resume", False)


async def test_positions_go_to_rooms_with_recent_messages(worker):
    for room in ("ops", "ops", "elsewhere"):
        await worker.send({"type": "chat.message", "message": "x"}, room=room)
        await worker.reply()

    await worker.app.send_input({"type": "chat.positions"})
    positions = [await worker.reply(), await worker.reply()]

    assert sorted((p["type"], p["room"], p["offset"]) for p in positions) == [
        ("chat.position", "elsewhere", 1),
        ("chat.position", "ops", 2),
    ]
