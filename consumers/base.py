"""A WebSocket consumer that forwards client frames to a worker channel and relays replies."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import ChannelFull, StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from project import protocol
from project.protocol import ErrorCode, ProtocolError

from .connections import connections
from .fanout import fanout_for
from .outbox import Outbox

log = logging.getLogger(__name__)

def identify(scope: dict[str, Any], allow_anonymous: bool) -> tuple[str, int | None] | None:
    """``(display name, user id)`` of a socket, or ``None`` when it must be refused.

    ``project.socket_auth`` has already resolved ``scope["user"]`` from the session cookie.
    A guest gets a name that is stable for this connection only.
    """
    user = scope.get("user")
    if user is not None and user.is_authenticated:
        return user.get_username(), user.pk
    if allow_anonymous:
        return f"guest-{secrets.token_hex(4)}", None
    return None


def group_layer():
    """The channel layer that carries broadcasts (``GROUP_LAYER``; the core layer by default)."""
    return get_channel_layer(settings.GROUP_LAYER_ALIAS)


class EdgeConsumer(AsyncWebsocketConsumer):
    """A WebSocket consumer that never touches the database.

    Channels' own ``dispatch`` and ``websocket_disconnect`` first close stale database
    connections: a hop to a thread for every message to every socket, the largest single
    cost in the web process under fan-out (py-spy; see docs/performance.md). Consumers
    here have no database connection to close, so they dispatch straight to the handler.
    """

    async def dispatch(self, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        await self.disconnect(message.get("code"))
        raise StopConsumer()


class RelayConsumer(EdgeConsumer):
    """Decodes client frames cheaply and forwards them to ``worker_channel``.

    Channel messages whose ``type`` is a server frame type carry the frame already
    encoded in ``text`` (see :func:`project.protocol.relay`); :meth:`relay` queues it
    for the socket as-is, so a broadcast is never re-encoded per socket.

    Every frame to the client goes through the socket's :class:`Outbox`, in order, and
    nothing here waits for the client to read. A client that falls a whole outbox behind
    gets :meth:`slow_client`; by default it is closed with ``CLOSE_SLOW_CLIENT``.
    """

    worker_channel: str
    client_types: frozenset[str]

    counted = False  # whether this socket is in the process's open-connection count
    group: str | None = None
    closing: asyncio.Task | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outbox = Outbox(
            write=self.write_text,
            on_overflow=self.slow_client,
            max_frames=settings.SOCKET_QUEUE_MAX_FRAMES,
            max_bytes=settings.SOCKET_QUEUE_MAX_BYTES,
        )

    async def join_group(self, group: str) -> None:
        """Broadcasts to ``group`` reach this socket from the moment this returns (see fanout.py)."""
        await fanout_for(group_layer()).join(group, self)
        self.group = group

    async def accept(self, subprotocol: str | None = None, headers=None) -> None:
        await super().accept(subprotocol, headers)
        self.outbox.start()
        connections.opened()
        self.counted = True

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        self.outbox.shut_down()
        if self.counted:
            connections.closed()
            self.counted = False
        if self.group is not None:
            await fanout_for(group_layer()).leave(self.group, self)
            self.group = None
        await super().websocket_disconnect(message)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            frame = protocol.decode_client_frame(text_data, self.client_types)
        except ProtocolError as error:
            await self.send_frame(error.frame())
            return
        await self.forward(frame)

    async def forward(self, frame: dict[str, Any]) -> None:
        """Hand a client frame to the worker; the worker answers on ``reply_channel``."""
        message = {"type": frame["type"], "frame": frame, "reply_channel": self.channel_name}
        message.update(self.worker_fields())
        try:
            await self.channel_layer.send(self.worker_channel, message)
        except ChannelFull:
            log.warning("worker channel %s is full; refusing a %s frame", self.worker_channel, frame["type"])
            client_id = frame.get("client_id") if isinstance(frame.get("client_id"), str) else None
            await self.send_frame(
                ProtocolError(ErrorCode.SERVER_BUSY, "the server is busy, try again shortly", client_id).frame()
            )

    def worker_fields(self) -> dict[str, Any]:
        """What the worker needs to know about this socket besides the frame."""
        return {}

    async def send_frame(self, frame: dict[str, Any]) -> None:
        self.outbox.put(protocol.encode(frame))

    async def relay(self, event: dict[str, Any]) -> None:
        self.outbox.put(event["text"])

    error = relay

    async def write_text(self, text: str) -> None:
        """The outbox's writer: the only place a frame reaches the socket."""
        await self.send(text_data=text)

    def slow_client(self, outbox: Outbox) -> None:
        """The client has not read a whole outbox: drop what waits and close the socket.

        The client reconnects and resumes (chat: ``chat.resume`` from the highest id seen).
        """
        dropped = outbox.shut_down()
        log.info("closing a slow %s socket; %d frames were waiting", type(self).__name__, dropped)
        self.closing = asyncio.get_running_loop().create_task(self.close_slow_client())

    async def close_slow_client(self) -> None:
        try:
            await self.close(code=protocol.CLOSE_SLOW_CLIENT, reason=protocol.SLOW_CLIENT)
        except Exception as error:  # already gone: its disconnect cleans up
            log.debug("closing a slow socket failed: %r", error)


class RefuseConsumer(EdgeConsumer):
    """Refuses at the handshake any WebSocket path that no route serves."""

    async def connect(self) -> None:
        await self.close()
