"""Chat rooms: ``/ws/chat/`` (room ``lobby``) and ``/ws/chat/<room>/``."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from project import metrics, protocol

from .base import RelayConsumer, identify


class ChatConsumer(RelayConsumer):
    worker_channel = protocol.CHAT_WORKER
    client_types = protocol.CHAT_CLIENT_TYPES

    async def connect(self) -> None:
        identity = identify(self.scope, settings.ALLOW_ANONYMOUS)
        if identity is None:
            metrics.handshake(self.worker_channel, metrics.UNAUTHENTICATED)
            await self.close()
            return
        self.user_name, self.user_id = identity
        self.room = self.scope["url_route"]["kwargs"].get("room", protocol.DEFAULT_ROOM)
        # Join before asking for history so that nothing falls between the two; a message in
        # both is de-duplicated by id on the client. A client coming back says where it was
        # (?after_offset=N) and gets what it missed instead of the last page: one request to
        # the worker per reconnect, not two.
        after_offset = protocol.resume_offset(self.scope.get("query_string", b""))
        first = (
            {"type": protocol.CHAT_JOIN}
            if after_offset is None
            else {"type": protocol.CHAT_RESUME, "after_offset": after_offset}
        )
        await self.join_and_ask(protocol.chat_group(self.room), first)

    def worker_fields(self) -> dict[str, Any]:
        return {"room": self.room, "user": self.user_name, "user_id": self.user_id}

    chat_message = RelayConsumer.relay
    chat_history = RelayConsumer.relay
    chat_position = RelayConsumer.relay
