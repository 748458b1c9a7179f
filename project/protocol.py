"""The wire protocol, defined in one place.

Frame type names, error codes, limits, the checkers for client frames and the one
JSON encoder live here; consumers, workers, the scheduler, tests and
``docs/protocol.md`` all use these names. A frame's ``type`` is also the channel
message type, so Channels dispatches it straight onto a handler method
(``"chat.message"`` -> ``chat_message``).

Server -> client frames travel through the channel layer already encoded
(``{"type": ..., "text": "<json>"}``, see :func:`relay`): a broadcast is encoded
once by the worker, not once per socket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, overload
from urllib.parse import parse_qs

import orjson

# --- Worker channels (the ``channel`` half of ProtocolTypeRouter) ------------------------

CHAT_WORKER = "chat"
STATUS_WORKER = "status"
WORKER_CHANNELS = (CHAT_WORKER, STATUS_WORKER)

# --- Limits -------------------------------------------------------------------------------

MAX_FRAME_BYTES = 64 * 1024
CLIENT_ID_MAX_CHARS = 64
# Ids and offsets are BIGINT columns: a larger number (JSON allows any) would fail the query.
INT_FIELD_MAX = 2**63 - 1
HISTORY_ON_JOIN = 50
HISTORY_PAGE_MAX = 100
RESUME_MAX = 500
POSITION_EVERY_S = 2
# Rooms with a message stored this recently get position frames (a broadcast lost longer ago
# than this was long since recovered, or the client joined after it and got it in history).
POSITION_WINDOW_S = 60

# --- Fleet ------------------------------------------------------------------------------------

MACHINE_STATES = ("pending", "provisioning", "ready", "failed", "offline")
SOFTWARE_STATES = ("queued", "installing", "done", "failed")
MACHINE_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
SOFTWARE_NAME_MAX_CHARS = 100
SOFTWARE_PER_REPORT_MAX = 200
MAX_REPORT_BYTES = 64 * 1024
# POST /api/reports: at most this many {name, report} items, and this many bytes of body.
REPORT_BATCH_MAX_ITEMS = 1000
MAX_REPORT_BATCH_BYTES = 2 * 1024 * 1024
# A report's optional ``sent_at``: an RFC 3339 timestamp with its zone, at most this long.
SENT_AT_MAX_CHARS = 40

# --- Rooms ---------------------------------------------------------------------------------

DEFAULT_ROOM = "lobby"
ROOM_PATTERN = r"[A-Za-z0-9_-]{1,64}"
ROOM_RE = re.compile(ROOM_PATTERN)


def chat_group(room: str) -> str:
    """The channel-layer group of a room's sockets."""
    return f"chat.{room}"


# --- Frame types -----------------------------------------------------------------------------

CHAT_MESSAGE = "chat.message"
CHAT_HISTORY = "chat.history"
CHAT_RESUME = "chat.resume"
# Server -> client, every POSITION_EVERY_S to rooms with recent messages: the room's newest
# offset, so that a client whose last offset is lower (a broadcast it never got) resumes.
CHAT_POSITION = "chat.position"
ERROR = "error"

STATUS_SNAPSHOT = "status.snapshot"
STATUS_UPDATE = "status.update"
# Client -> server: "send me a snapshot". Server -> client: "frames meant for you were
# dropped because you were not reading; a snapshot follows" (see slow clients below).
STATUS_RESYNC = "status.resync"

# Client -> server: show me this view of the fleet (a page, a state, a name search). Answered
# with the view's snapshot, then its updates; without it a socket streams the whole fleet.
STATUS_VIEW = "status.view"

# Client frames each socket kind accepts; anything else is ``unknown_type``.
CHAT_CLIENT_TYPES = frozenset({CHAT_MESSAGE, CHAT_HISTORY, CHAT_RESUME})
STATUS_CLIENT_TYPES = frozenset({STATUS_RESYNC, STATUS_VIEW})

# Worker-only message types (never seen by a client).
CHAT_JOIN = "chat.join"
CHAT_POSITIONS = "chat.positions"  # leading scheduler -> chat worker: announce rooms' positions
STATUS_JOIN = "status.join"
STATUS_TICK = "status.tick"  # leading scheduler -> a status worker, once per second, fenced
# leading scheduler -> a status worker, half a second after each tick: apply the reports queued
# so far, so that the tick has only the rest to apply before its update goes out
STATUS_APPLY = "status.apply"
# Reports and removals reach the status workers through a Redis stream, not a channel
# (project/reportqueue.py): what the API answered 202 must outlive a worker's crash.
HEALTH_PING = "health.ping"  # readyz -> status worker; answered with HEALTH_PONG
HEALTH_PONG = "health.pong"

STATUS_GROUP = "status"

# --- Status views (docs/protocol.md, "Views") ------------------------------------------------

# A view is a page of the machines matching a state and a name search, in name order. Sockets
# showing the same view share a group, so each view's update is encoded once per tick.
STATUS_PAGE_SIZE = 100
STATUS_PAGE_MAX = 1_000_000
# Different views shown at once, over every web process: each costs the status worker a page
# computed and a group sent every second. A view beyond them is answered ``server_busy``.
STATUS_VIEWS_MAX = 200
# The machine-name alphabet; short enough that every view's group name stays under the
# channel layer's 100 characters.
STATUS_SEARCH_RE = re.compile(r"[A-Za-z0-9_.-]{1,40}")


@dataclass(frozen=True)
class StatusView:
    """What one dashboard shows. ``search`` is lower case and matches names containing it,
    whatever their case; ``None`` for state or search means "any"."""

    page: int = 1
    state: str | None = None
    search: str | None = None

    @property
    def group(self) -> str:
        """The channel-layer group of the sockets showing this view."""
        group = f"{STATUS_GROUP}.page.{self.page}"
        if self.state is not None:
            group += f".state.{self.state}"
        if self.search is not None:
            group += f".search.{self.search}"
        return group

    def describe(self) -> dict[str, Any]:
        return {"page": self.page, "state": self.state, "search": self.search}

    @property
    def first(self) -> int:
        """Index, in the view's ordered machines, of the first one on this page."""
        return (self.page - 1) * STATUS_PAGE_SIZE

    def shows_name(self, name: str) -> bool:
        return self.search is None or self.search in name.lower()


# --- Slow clients ---------------------------------------------------------------------------

# A socket whose client falls a whole outbox behind (settings.SOCKET_QUEUE_MAX_FRAMES /
# SOCKET_QUEUE_MAX_BYTES; consumers/outbox.py). Status sockets are resynced with a
# ``status.resync`` frame carrying this reason; other sockets are closed with this code
# (4000-4999 are the application's own) and reconnect.
SLOW_CLIENT = "slow_client"
CLOSE_SLOW_CLIENT = 4008
# The server could not set the socket up (Redis away for a moment), or its web process lost
# Redis (reason SERVER_UNAVAILABLE, consumers/redis_watch.py): reconnect with backoff.
CLOSE_TRY_AGAIN = 1011
SERVER_UNAVAILABLE = "server_unavailable"

# --- Fair shares (consumers/limits.py) ----------------------------------------------------

# Client frames limited per socket, by class; each class's burst and rate per second are
# settings (EDGE_MESSAGES_*, EDGE_READS_*). Over it: ``rate_limited`` with ``retry_after``, and
# the frame never reaches a worker. Stored chat messages are also limited per user and room by
# the worker (CHAT_RATE_LIMIT_*), which counts what was stored.
EDGE_LIMITED = {
    CHAT_MESSAGE: "messages",
    CHAT_HISTORY: "reads",
    CHAT_RESUME: "reads",
    STATUS_RESYNC: "reads",
    STATUS_VIEW: "reads",
}
# A handshake over the user's socket cap or join rate is accepted and closed with this code and
# one of these reasons: back off (at least a second) before trying again.
CLOSE_TOO_MANY = 4029
TOO_MANY_SOCKETS = "too_many_sockets"
TOO_MANY_JOINS = "too_many_joins"

# --- Sessions (consumers/sessions.py) -------------------------------------------------------

# A socket whose Django session ended (logout, expiry, password change, user deactivated or
# deleted) is closed with this code and reason. The client must not reconnect: log in again.
CLOSE_SESSION_ENDED = 4001
SESSION_ENDED = "session_ended"
# Web -> every web process, on logout: ``{"type": SESSION_END, "session": <hash of the key>}``
# to SESSIONS_GROUP, which each web process joins once.
SESSIONS_GROUP = "sessions"
SESSION_END = "session.ended"


# --- Errors -------------------------------------------------------------------------------------


class ErrorCode:
    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    MESSAGE_TOO_LONG = "message_too_long"
    UNKNOWN_TYPE = "unknown_type"
    RATE_LIMITED = "rate_limited"
    SERVER_BUSY = "server_busy"
    FRAME_TOO_LARGE = "frame_too_large"
    INTERNAL_ERROR = "internal_error"


@dataclass
class ProtocolError(Exception):
    """A client frame that cannot be served; becomes an ``error`` frame, never a traceback."""

    code: str
    detail: str
    client_id: str | None = None
    retry_after: float | None = None

    def frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "type": ERROR,
            "code": self.code,
            "detail": self.detail,
            "client_id": self.client_id,
        }
        if self.retry_after is not None:
            frame["retry_after"] = self.retry_after
        return frame


# --- Timestamps ----------------------------------------------------------------------------


@overload
def iso_utc(moment: datetime) -> str: ...
@overload
def iso_utc(moment: None) -> None: ...
@overload
def iso_utc(moment: datetime | None) -> str | None: ...
def iso_utc(moment: datetime | None) -> str | None:
    """Timestamps on the wire: ISO-8601, UTC, milliseconds, ``Z``."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- Encoding -------------------------------------------------------------------------------


def encode(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


def relay(frame: dict[str, Any]) -> dict[str, str]:
    """The channel message that carries ``frame`` to a consumer, encoded once."""
    return {"type": frame["type"], "text": encode(frame)}


# --- Client frame checkers -------------------------------------------------------------------


def has_nul(value: Any) -> bool:
    """Whether decoded JSON holds a NUL character in any string: PostgreSQL cannot store one,
    so no frame or report may carry it (SQLite would have, and the two must agree)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(key) or has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(has_nul(item) for item in value)
    return False


def decode_client_frame(text: str | None, allowed_types: frozenset[str]) -> dict[str, Any]:
    """Cheap checks a consumer makes before forwarding: size, JSON, an object, a known type.

    The tutorial's bare ``{"message": "..."}`` is read as ``chat.message``.
    """
    if text is None:
        raise ProtocolError(ErrorCode.INVALID_JSON, "frames must be JSON text, not binary")
    # A lone surrogate cannot come off the wire (the server checks UTF-8) but must not raise here;
    # orjson rejects it below.
    if len(text) > MAX_FRAME_BYTES or len(text.encode(errors="surrogatepass")) > MAX_FRAME_BYTES:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"frames are limited to {MAX_FRAME_BYTES} bytes")
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError(ErrorCode.INVALID_JSON, "frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise ProtocolError(ErrorCode.INVALID_JSON, "frame must be a JSON object")
    # A NUL reaches the text only as \u0000: the walk runs for frames that may hold one.
    if "\\u0000" in text and has_nul(frame):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "frames must not contain NUL characters (\\u0000)")
    client_id = frame.get("client_id") if isinstance(frame.get("client_id"), str) else None
    if "type" not in frame and CHAT_MESSAGE in allowed_types and "message" in frame:
        frame["type"] = CHAT_MESSAGE
    if not isinstance(frame.get("type"), str) or frame["type"] not in allowed_types:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"type must be one of: {', '.join(sorted(allowed_types))}",
            client_id=client_id,
        )
    return frame


def check_client_id(frame: dict[str, Any]) -> str | None:
    client_id = frame.get("client_id")
    if client_id is None:
        return None
    if not isinstance(client_id, str) or not 0 < len(client_id) <= CLIENT_ID_MAX_CHARS:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"client_id must be a string of 1 to {CLIENT_ID_MAX_CHARS} characters",
        )
    return client_id


def check_chat_message(frame: dict[str, Any], max_chars: int) -> tuple[str, str | None]:
    """The message text (trimmed) and client_id of a ``chat.message`` frame."""
    client_id = check_client_id(frame)
    message = frame.get("message")
    if not isinstance(message, str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "message must be a string", client_id)
    message = message.strip()
    if not message:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "message must not be empty", client_id)
    if len(message) > max_chars:
        raise ProtocolError(
            ErrorCode.MESSAGE_TOO_LONG, f"message is limited to {max_chars} characters", client_id
        )
    return message, client_id


def _check_int(frame: dict[str, Any], name: str, low: int, high: int = INT_FIELD_MAX) -> int:
    value = frame.get(name)
    # bool is an int in Python; on the wire it is not a number.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{name} must be an integer between {low} and {high}")
    return value


def check_chat_history(frame: dict[str, Any]) -> tuple[int, int]:
    """``before_id`` and ``limit`` of a ``chat.history`` request."""
    before_id = _check_int(frame, "before_id", 1)
    limit = frame.get("limit", HISTORY_ON_JOIN)
    limit = _check_int({"limit": limit}, "limit", 1, HISTORY_PAGE_MAX)
    return before_id, limit


def resume_offset(query_string: bytes) -> int | None:
    """``after_offset`` of a chat socket's URL (``/ws/chat/ops/?after_offset=41``), if valid."""
    values = parse_qs(query_string.decode("latin-1")).get("after_offset", [])
    # isdigit() alone also accepts "²", which int() refuses: ASCII digits only.
    if len(values) == 1 and values[0].isascii() and values[0].isdigit() and len(values[0]) <= 18:
        return int(values[0])
    return None


def check_chat_resume(frame: dict[str, Any]) -> tuple[str, int]:
    """What a ``chat.resume`` resumes after: ``("offset", n)`` (``after_offset``, the room's
    position) or ``("id", n)`` (``after_id``, for clients that predate offsets)."""
    if "after_offset" in frame:
        return "offset", _check_int(frame, "after_offset", 0)
    if "after_id" in frame:
        return "id", _check_int(frame, "after_id", 0)
    raise ProtocolError(
        ErrorCode.INVALID_MESSAGE, "chat.resume needs after_offset (or after_id), an integer >= 0"
    )


def check_status_view(frame: dict[str, Any]) -> StatusView:
    """The view a ``status.view`` frame selects: ``page`` (default 1), ``state`` and ``search``
    (``null`` or absent: any; an empty search is no search)."""
    page = _check_int({"page": frame.get("page", 1)}, "page", 1, STATUS_PAGE_MAX)
    state = frame.get("state")
    if state is not None and (not isinstance(state, str) or state not in MACHINE_STATES):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"state must be null or one of: {', '.join(MACHINE_STATES)}"
        )
    search = frame.get("search")
    if search == "":
        search = None
    if search is not None and (not isinstance(search, str) or not STATUS_SEARCH_RE.fullmatch(search)):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            "search must be null or 1 to 40 of the characters of machine names: A-Z a-z 0-9 _ . -",
        )
    return StatusView(page, state, search.lower() if search is not None else None)


def status_view_from_query(query_string: bytes) -> StatusView | None:
    """The view a status socket's URL selects (``/ws/status/?page=2&state=failed&search=db``),
    or ``None`` when it names none (the whole fleet). ``ProtocolError`` for a bad one."""
    params = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
    named = {name: values for name, values in params.items() if name in ("page", "state", "search")}
    if not named:
        return None
    if any(len(values) != 1 for values in named.values()):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "page, state and search may each be given once")
    frame: dict[str, Any] = {name: values[0] for name, values in named.items()}
    page = frame.get("page", "1")
    # isdigit() alone also accepts "²", which int() refuses: ASCII digits only.
    frame["page"] = int(page) if page.isascii() and page.isdigit() and len(page) <= 7 else page
    frame["state"] = frame.get("state") or None
    return check_status_view(frame)
