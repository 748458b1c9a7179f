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
from channels.utils import await_many_dispatch
from django.conf import settings

from project import metrics, orphans, protocol
from project.protocol import ErrorCode, ProtocolError

from .connections import connections
from .fanout import fanout_for
from .limits import FrameLimits, sockets
from .outbox import Outbox
from .redis_watch import redis_watch
from .sessions import sessions

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
    """A WebSocket consumer that never touches the database and outlives its channel layer.

    Channels' own ``dispatch`` and ``websocket_disconnect`` first close stale database
    connections: a hop to a thread for every message to every socket, the largest single
    cost in the web process under fan-out (py-spy; see docs/performance.md). Consumers
    here have no database connection to close, so they dispatch straight to the handler.

    Channels' ``__call__`` ends the consumer on the first error from the channel layer (Redis
    restarting) or from a handler, and then nothing undoes what the socket had set up. Here a
    layer error is retried, a handler error is logged (and answered, for a client frame), and
    :meth:`clean_up` runs however the consumer ends.
    """

    async def __call__(self, scope, receive, send) -> None:
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self.base_send = send
        try:
            await await_many_dispatch([receive, self.receive_from_layer], self.dispatch)
        except StopConsumer:
            pass
        finally:
            # Nothing receives for this socket any more: replies still on their way are dropped.
            orphans.forget(self.channel_layer, self.channel_name)
            await self.clean_up()

    async def receive_from_layer(self) -> dict[str, Any]:
        """The next message for this socket's channel, waiting out a Redis restart or failover."""
        failures = 0
        while True:
            try:
                return await self.channel_layer.receive(self.channel_name)
            except Exception as error:
                failures += 1
                log.warning("receiving for a socket failed (%s); retrying", error)
                fanout_for(group_layer()).layer_failed()
                await asyncio.sleep(min(2.0, 0.1 * 2**failures))

    async def dispatch(self, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            log.warning("%s has no handler for %s", type(self).__name__, message["type"])
            return
        try:
            await handler(message)
        except (StopConsumer, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("%s failed on a %s message", type(self).__name__, message["type"])
            if message["type"] == "websocket.receive":
                await self.send_frame(
                    ProtocolError(ErrorCode.INTERNAL_ERROR, "the server could not handle this frame").frame()
                )
            elif message["type"] == "websocket.connect":
                metrics.handshake(getattr(self, "worker_channel", "none"), metrics.ERROR)
                await self.close(code=protocol.CLOSE_TRY_AGAIN)  # refused, not left waiting

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        await self.disconnect(message.get("code"))
        raise StopConsumer()

    async def send_frame(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=protocol.encode(frame))

    async def clean_up(self) -> None:
        """Undo what this socket set up; safe to call more than once."""


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
            kind=self.worker_channel,
        )
        self.frame_limits = FrameLimits(protocol.EDGE_LIMITED, settings.EDGE_LIMITS)

    async def join_group(self, group: str) -> None:
        """Broadcasts to ``group`` reach this socket from the moment this returns (see fanout.py)."""
        await fanout_for(group_layer()).join(group, self)
        self.group = group

    async def accept(self, subprotocol: str | None = None, headers=None) -> None:
        await super().accept(subprotocol, headers)
        self.outbox.start()
        connections.opened()
        metrics.socket_opened(self.worker_channel)
        self.counted = True
        sessions.follow(self)
        redis_watch.follow(self)

    async def clean_up(self) -> None:
        self.outbox.shut_down()
        sessions.unfollow(self)
        redis_watch.unfollow(self)
        if self.counted:
            connections.closed()
            metrics.socket_closed(self.worker_channel)
            self.counted = False
        if self.group is not None:
            group, self.group = self.group, None
            await fanout_for(group_layer()).leave(group, self)
        await sockets.release(self.channel_name)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        await self.clean_up()
        await super().websocket_disconnect(message)

    async def join_and_ask(self, group: str, first_frame: dict[str, Any]) -> bool:
        """Join ``group``, accept the socket and forward ``first_frame`` (what the socket gets
        first: history, a snapshot). If the channel layer is away the socket is refused (before
        accept) or closed with 1011 (after), and the client reconnects; ``False`` then.
        A user over their socket cap or join rate is closed with 4029 (consumers/limits.py)."""
        if redis_watch.lost:  # refused at once, as when joining fails (consumers/redis_watch.py)
            metrics.handshake(self.worker_channel, metrics.LAYER_UNAVAILABLE)
            await self.close()
            return False
        refusal = await sockets.admit(self.scope, self.channel_name)
        if refusal is not None:
            metrics.handshake(self.worker_channel, refusal)
            await self.accept()
            await self.close(code=protocol.CLOSE_TOO_MANY, reason=refusal)
            return False
        try:
            await self.join_group(group)
        except Exception as error:
            log.warning("refusing a socket: joining %s failed (%s)", group, error)
            fanout_for(group_layer()).layer_failed()
            metrics.handshake(self.worker_channel, metrics.LAYER_UNAVAILABLE)
            await self.close()
            return False
        await self.accept()
        if not await self.forward(first_frame):
            metrics.handshake(self.worker_channel, metrics.WORKER_UNAVAILABLE)
            await self.close(code=protocol.CLOSE_TRY_AGAIN)
            return False
        metrics.handshake(self.worker_channel, metrics.ACCEPTED)
        return True

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            frame = protocol.decode_client_frame(text_data, self.client_types)
        except ProtocolError as error:
            await self.send_frame(error.frame())
            return
        wait_s = self.frame_limits.take(frame["type"])
        if wait_s is not None:
            client_id = frame.get("client_id") if isinstance(frame.get("client_id"), str) else None
            detail = f"too many {frame['type']} frames on this socket; retry after {wait_s} s"
            await self.send_frame(
                ProtocolError(ErrorCode.RATE_LIMITED, detail, client_id, retry_after=wait_s).frame()
            )
            return
        await self.forward(frame)

    async def forward(self, frame: dict[str, Any]) -> bool:
        """Hand a client frame to the worker; the worker answers on ``reply_channel``.

        ``False`` (and the client told ``server_busy``) if the worker channel is full or Redis
        cannot be reached: nothing was queued, the client may send it again."""
        message = {"type": frame["type"], "frame": frame, "reply_channel": self.channel_name}
        message.update(self.worker_fields())
        try:
            await self.channel_layer.send(self.worker_channel, message)
            return True
        except ChannelFull:
            log.warning("worker channel %s is full; refusing a %s frame", self.worker_channel, frame["type"])
        except Exception as error:  # Redis away, restarting or failing over
            log.warning("could not forward a %s frame (%s)", frame["type"], error)
            fanout_for(group_layer()).layer_failed()
        client_id = frame.get("client_id") if isinstance(frame.get("client_id"), str) else None
        await self.send_frame(
            ProtocolError(ErrorCode.SERVER_BUSY, "the server is busy, try again shortly", client_id).frame()
        )
        return False

    def worker_fields(self) -> dict[str, Any]:
        """What the worker needs to know about this socket besides the frame."""
        return {}

    async def send_frame(self, frame: dict[str, Any]) -> None:
        self.outbox.put(protocol.encode(frame))

    async def relay(self, event: dict[str, Any]) -> None:
        self.outbox.put(event["text"])

    error = relay

    async def write_text(self, text: str) -> None:
        """The outbox's writer: the only place a frame reaches the socket (straight to the
        server's ``send``, as ``AsyncWebsocketConsumer.send`` would, two calls fewer per frame)."""
        await self.base_send({"type": "websocket.send", "text": text})

    def slow_client(self, outbox: Outbox) -> None:
        """The client has not read a whole outbox: drop what waits and close the socket.

        The client reconnects and resumes (chat: ``chat.resume`` from the highest id seen).
        """
        dropped = outbox.shut_down()
        metrics.slow_client_closes.labels(self.worker_channel).inc()
        log.info("closing a slow %s socket; %d frames were waiting", type(self).__name__, dropped)
        self.closing = asyncio.get_running_loop().create_task(self.close_slow_client())

    async def close_slow_client(self) -> None:
        await self.close_quietly(protocol.CLOSE_SLOW_CLIENT, protocol.SLOW_CLIENT)

    def close_ended_session(self) -> None:
        """The session this socket was opened with ended (consumers/sessions.py): nothing more
        reaches the client, which is closed with 4001 and must log in again.

        The close runs in a task of its own, as for a slow client: uvicorn's ``send`` waits
        while the client is not reading, and the caller closes many sockets in one loop."""
        self.close_soon(protocol.CLOSE_SESSION_ENDED, protocol.SESSION_ENDED)

    def close_soon(self, code: int, reason: str) -> None:
        """Drop what waits for the client and close the socket with ``code``, in a task of its own."""
        self.outbox.shut_down()
        self.closing = asyncio.get_running_loop().create_task(self.close_quietly(code, reason))

    async def close_quietly(self, code: int, reason: str) -> None:
        try:
            await self.close(code=code, reason=reason)
        except Exception as error:  # already gone: its disconnect cleans up
            log.debug("closing a socket with %d failed: %r", code, error)


class RefuseConsumer(EdgeConsumer):
    """Refuses at the handshake any WebSocket path that no route serves."""

    async def connect(self) -> None:
        metrics.handshake("none", metrics.NO_ROUTE)
        await self.close()
