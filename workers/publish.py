"""The one way anything reaches clients: encoded once, sent after the transaction commits."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

from project.protocol import relay

log = logging.getLogger(__name__)


def publish(group: str, frame: dict[str, Any]) -> None:
    """Broadcast ``frame`` to every socket in ``group`` once the current transaction commits,
    so that no client ever sees what was rolled back."""
    message = relay(frame)
    layer = get_channel_layer(settings.GROUP_LAYER_ALIAS)
    transaction.on_commit(lambda: async_to_sync(layer.group_send)(group, message))


def broadcast_encoded(broadcasts: list[tuple[str, dict[str, Any]]]) -> None:
    """Send channel messages already built around encoded, stored frames (the status feed's
    updates: the whole fleet's and each view's), each to its group, right now and all at once."""
    layer = get_channel_layer(settings.GROUP_LAYER_ALIAS)

    async def send_all() -> None:
        await asyncio.gather(*(layer.group_send(group, message) for group, message in broadcasts))

    async_to_sync(send_all)()


def reply(channel: str, frame: dict[str, Any]) -> None:
    """Send ``frame`` to one socket's consumer (history pages, errors, resend answers)."""
    deliver(channel, relay(frame))


def deliver(channel: str, message: dict[str, Any]) -> None:
    """Send an already-built channel message to one consumer."""
    try:
        async_to_sync(get_channel_layer().send)(channel, message)
    except ChannelFull:
        # The consumer is not reading; its client recovers by resuming or resyncing.
        log.warning("channel %s is full; dropped a %s message", channel, message["type"])
