"""Chat rooms: ``/ws/chat/`` (room ``lobby``) and ``/ws/chat/<room>/``."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from project import protocol

from .base import RelayConsumer, identify


class ChatConsumer(RelayConsumer):
    worker_channel = protocol.CHAT_WORKER
    client_types = protocol.CHAT_CLIENT_TYPES

    async def connect(self) -> None:
        identity = identify(self.scope, settings.ALLOW_ANONYMOUS)
        if identity is None:
            await self.close()
            return
        self.user_name, self.user_id = identity
        self.room = self.scope["url_route"]["kwargs"].get("room", protocol.DEFAULT_ROOM)
        # Join before asking for history so that nothing falls between the two;
        # a message in both is de-duplicated by id on the client.
        await self.join_and_ask(protocol.chat_group(self.room), {"type": protocol.CHAT_JOIN})

    def worker_fields(self) -> dict[str, Any]:
        return {"room": self.room, "user": self.user_name, "user_id": self.user_id}

    chat_message = RelayConsumer.relay
    chat_history = RelayConsumer.relay
    chat_position = RelayConsumer.relay
