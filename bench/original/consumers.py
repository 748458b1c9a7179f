"""The seed's ``AttimeConsumer``, reproduced as the blog post wrote it (for S3).

Every connection starts its own endless one-second loop that ``group_send``s to the
whole group, so N sockets make N group messages and N² frames a second, and the loops
outlive their sockets. The only change: the payload carries the send time
(``sent_ns``) instead of ``'hello'``, so that latency can be measured.
"""

import asyncio
import json
import time

from channels.generic.websocket import AsyncWebsocketConsumer


class AttimeConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        await self.channel_layer.group_add("group_name", self.channel_name)
        await self.accept()
        asyncio.create_task(self.send_messages())  # noqa: RUF006 (the original design, as published)

    async def disconnect(self, close_code):
        await self.channel_layer.group_discard("group_name", self.channel_name)

    async def receive(self, text_data):
        pass

    async def send_message(self, event):
        await self.send(text_data=json.dumps(event["message"]))

    async def send_messages(self):
        while True:
            await asyncio.sleep(1)
            await self.channel_layer.group_send(
                "group_name", {"type": "send.message", "message": {"sent_ns": time.time_ns()}}
            )
