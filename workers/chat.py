"""The chat worker: validates, rate-limits, persists, then broadcasts.

Every message arrives from a :class:`consumers.chat.ChatConsumer` with the client's
``frame`` and who sent it (``room``, ``user``, ``user_id``, ``reply_channel``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from project import protocol
from project.protocol import ErrorCode, ProtocolError

from .base import WorkerConsumer
from .models import Message, Room
from .publish import publish, reply
from .ratelimit import retry_after_s

log = logging.getLogger(__name__)


def history_frame(room: str, messages: list[Message], truncated: bool, kind: str) -> dict[str, Any]:
    return {
        "type": protocol.CHAT_HISTORY,
        "room": room,
        "kind": kind,
        "messages": [message.payload() for message in messages],
        "truncated": truncated,
    }


def next_offset(room: str) -> int:
    """The room's next offset, in the caller's transaction. The room's row stays locked until
    it commits (PostgreSQL: row lock; SQLite: the write transaction), so offsets are contiguous
    and given out in commit order however many chat workers run."""
    Room.objects.get_or_create(name=room)
    locked = Room.objects.select_for_update().get(name=room)
    locked.last_offset += 1
    locked.last_message_at = timezone.now()
    locked.save(update_fields=["last_offset", "last_message_at"])
    return locked.last_offset


def message_frame(message: Message) -> dict[str, Any]:
    return {"type": protocol.CHAT_MESSAGE, **message.payload()}


@contextmanager
def answering_errors(message: dict[str, Any]) -> Iterator[None]:
    """Answers a frame that cannot be served with an ``error`` frame, never a traceback."""
    frame = message.get("frame", {})
    try:
        yield
    except ProtocolError as error:
        if error.client_id is None and isinstance(frame.get("client_id"), str):
            error.client_id = frame["client_id"][: protocol.CLIENT_ID_MAX_CHARS]
        reply(message["reply_channel"], error.frame())
    except Exception:
        log.exception("chat worker failed on a %s frame", message.get("type"))
        reply(
            message["reply_channel"],
            ProtocolError(ErrorCode.INTERNAL_ERROR, "the server could not handle this frame").frame(),
        )


class ChatWorker(WorkerConsumer):
    """One method per message type; a :class:`ProtocolError` becomes an ``error`` frame."""

    def chat_join(self, message: dict[str, Any]) -> None:
        with answering_errors(message):
            self.send_history(message, before_id=None, limit=protocol.HISTORY_ON_JOIN, kind="join")

    def chat_history(self, message: dict[str, Any]) -> None:
        with answering_errors(message):
            before_id, limit = protocol.check_chat_history(message["frame"])
            self.send_history(message, before_id=before_id, limit=limit, kind="before")

    def chat_resume(self, message: dict[str, Any]) -> None:
        with answering_errors(message):
            position, after = protocol.check_chat_resume(message["frame"])
            found = list(
                Message.objects.filter(room=message["room"], **{f"{position}__gt": after}).order_by("offset")[
                    : protocol.RESUME_MAX + 1
                ]
            )
            truncated = len(found) > protocol.RESUME_MAX
            page = found[: protocol.RESUME_MAX]
            reply(message["reply_channel"], history_frame(message["room"], page, truncated, "resume"))

    def chat_message(self, message: dict[str, Any]) -> None:
        with answering_errors(message):
            text, client_id = protocol.check_chat_message(message["frame"], settings.CHAT_MESSAGE_MAX_CHARS)
            room, author = message["room"], message["user"]
            if client_id is not None:
                original = Message.objects.filter(room=room, author=author, client_id=client_id).first()
                if original is not None:
                    reply(message["reply_channel"], message_frame(original))
                    return
            wait_s = retry_after_s(
                room,
                author,
                timezone.now(),
                settings.CHAT_RATE_LIMIT_COUNT,
                settings.CHAT_RATE_LIMIT_WINDOW_S,
            )
            if wait_s is not None:
                raise ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"at most {settings.CHAT_RATE_LIMIT_COUNT} messages per "
                    f"{settings.CHAT_RATE_LIMIT_WINDOW_S} s; retry after {wait_s} s",
                    client_id,
                    retry_after=wait_s,
                )
            try:
                with transaction.atomic():
                    stored = Message.objects.create(
                        room=room,
                        offset=next_offset(room),
                        author=author,
                        user_id=message.get("user_id"),
                        body=text,
                        client_id=client_id,
                    )
                    publish(protocol.chat_group(room), message_frame(stored))
            except IntegrityError:
                # A concurrent resend of the same client_id won the race: answer with it.
                original = Message.objects.get(room=room, author=author, client_id=client_id)
                reply(message["reply_channel"], message_frame(original))

    def chat_positions(self, message: dict[str, Any]) -> None:
        """Tell every room with a recent message where it stands (``chat.position``)."""
        since = timezone.now() - timedelta(seconds=protocol.POSITION_WINDOW_S)
        for name, offset in Room.objects.filter(last_message_at__gte=since).values_list(
            "name", "last_offset"
        ):
            publish(
                protocol.chat_group(name), {"type": protocol.CHAT_POSITION, "room": name, "offset": offset}
            )

    def send_history(self, message: dict[str, Any], before_id: int | None, limit: int, kind: str) -> None:
        query = Message.objects.filter(room=message["room"])
        if before_id is not None:
            query = query.filter(id__lt=before_id)
        newest_first = list(query.order_by("-offset")[: limit + 1])
        truncated = len(newest_first) > limit
        oldest_first = newest_first[:limit][::-1]
        reply(message["reply_channel"], history_frame(message["room"], oldest_first, truncated, kind))
