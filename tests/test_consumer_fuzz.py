"""Random client frames against the real consumers: an answer for each, no traceback, no leak.

Real Procfile processes against a private Redis; real WebSocket clients send the frames of
``tests/test_protocol_fuzz.py`` to ``/ws/chat/<room>/`` (with a random query string) and to
``/ws/status/``. Every frame is answered (an ``error`` frame, or what a valid frame asks for)
and the socket stays open; a frame the server will not read is refused with a documented close
code, never a dropped connection. Once the sockets are closed nothing of them is left: the open
count the web processes publish is back to 0, and no room group, status group or per-user
socket entry remains in Redis.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import uuid

import pytest
import redis
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from project import heartbeats, keys, protocol

from .conftest import make_stack
from .stack import Stack, recv_json, recv_until
from .test_protocol_fuzz import CRASHERS, frame_texts

pytestmark = pytest.mark.integration

# What a frame may be answered with besides ``error``: a valid frame does what it asks.
CHAT_ANSWERS = {protocol.ERROR, protocol.CHAT_MESSAGE, protocol.CHAT_HISTORY}
STATUS_ANSWERS = {protocol.ERROR, protocol.STATUS_SNAPSHOT}
ONE_MIB = 1024 * 1024
# channels_redis' group key (RedisChannelLayer._group_key with settings' prefix "fleetchat").
GROUP_KEY = "fleetchat:group:{}"

# uvicorn's own refusal of a text frame that is not UTF-8 (close 1007) logs a traceback of its
# decode error (websockets_sansio_impl.py); nothing of ours runs for such a frame.
UVICORN_UTF8_REFUSAL = "Invalid UTF-8 sequence received from client."


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url):
    yield from make_stack(tmp_path_factory, redis_url, CHAT_RATE_LIMIT_COUNT="1000")


@pytest.fixture(scope="module")
def session(stack: Stack) -> str:
    stack.create_users("fuzzer")
    return stack.login("fuzzer")


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def as_sent(text: str) -> str | bytes:
    """A text the client can send: one with a lone surrogate is not UTF-8, so it goes as bytes
    (a binary frame); a text frame that is not UTF-8 is the server's to refuse (see below)."""
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return text.encode(errors="surrogatepass")


async def answer(ws, frame: str | bytes, answers: set[str]) -> dict:
    await ws.send(frame)
    while True:
        reply = await recv_json(ws)
        if reply["type"] in answers:
            return reply
        assert reply["type"] in (protocol.STATUS_UPDATE, protocol.CHAT_POSITION), reply


async def exchange(stack: Stack, session: str, room: str, query: str, frames: list[str | bytes]) -> None:
    chat_path = f"/ws/chat/{room}/?{query}"
    async with stack.connect(chat_path, session) as chat, stack.connect("/ws/status/", session) as status:
        await recv_until(chat, protocol.CHAT_HISTORY)
        await recv_until(status, protocol.STATUS_SNAPSHOT)
        for frame in frames:
            for ws, answers in ((chat, CHAT_ANSWERS), (status, STATUS_ANSWERS)):
                reply = await answer(ws, frame, answers)
                assert reply.get("code") != protocol.ErrorCode.INTERNAL_ERROR, (frame[:200], reply)


def wait_until(condition, what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def open_sockets(client: redis.Redis) -> int:
    """The open-socket count every web process publishes (consumers/connections.py)."""
    counts = [client.get(key) for key in client.scan_iter(f"{heartbeats.WEB_CONNECTIONS_PREFIX}*")]
    return sum(int(count) for count in counts if count is not None)


def leftovers(client: redis.Redis, rooms: list[str]) -> dict[str, int]:
    """Group members and per-user socket entries still in Redis, by key."""
    groups = [GROUP_KEY.format(protocol.chat_group(room)) for room in rooms] + [
        GROUP_KEY.format(protocol.STATUS_GROUP)
    ]
    entries = {key: client.zcard(key) for key in groups}
    entries.update({key.decode(): client.zcard(key) for key in client.scan_iter(f"{keys.USER_SOCKETS}*")})
    return {key: count for key, count in entries.items() if count}


@pytest.fixture
def logs_from(stack: Stack) -> dict[str, int]:
    """Where the web and worker logs stood when the test began."""
    return {name: len(stack.read_log(name)) for name in ("web", "worker")}


def tracebacks(stack: Stack, logs_from: dict[str, int]) -> list[str]:
    """Tracebacks logged since ``logs_from``, each with the line before it (what logged it)."""
    found = []
    for name, start in logs_from.items():
        lines = stack.read_log(name)[start:].splitlines()
        found += [
            f"{name}: {lines[n - 1]}"
            for n, line in enumerate(lines)
            if line.startswith("Traceback") and not (n and lines[n - 1].endswith(UVICORN_UTF8_REFUSAL))
        ]
    return found


def after_offset(value: str) -> str:
    return "after_offset=" + urllib.parse.quote(value)


query_strings = st.one_of(
    st.just(""),
    st.builds(after_offset, st.text(max_size=24)),
    # Digits that are not ASCII: "١٢" is an int to Python, "²" and "①" pass isdigit() only.
    st.builds(after_offset, st.text(st.characters(categories=("Nd", "No")).filter(str.isdigit), max_size=3)),
    st.builds(urllib.parse.quote, st.text(max_size=40), st.just("=&")),
)


def test_random_frames_are_answered_and_leave_nothing_behind(stack, session, redis_client, logs_from):
    rooms: list[str] = []

    # The same frames every run (derandomize), and no shrinking: each example is a real exchange
    # with processes whose state (rate limits, stored messages) a re-run does not reset.
    @settings(
        max_examples=20,
        deadline=None,
        database=None,
        derandomize=True,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(query_strings, st.lists(frame_texts, min_size=10, max_size=40))
    @example(after_offset("²"), CRASHERS)
    def random_frames(query: str, texts: list[str]) -> None:
        rooms.append(f"fuzz-{uuid.uuid4().hex[:8]}")
        asyncio.run(exchange(stack, session, rooms[-1], query, [as_sent(text) for text in texts]))

    random_frames()

    assert not tracebacks(stack, logs_from), stack.read_log("web")[-3000:] + stack.read_log("worker")[-3000:]
    wait_until(lambda: open_sockets(redis_client) == 0, "web processes still count open sockets")
    wait_until(lambda: not leftovers(redis_client, rooms), f"left in Redis: {leftovers(redis_client, rooms)}")


async def closed_by_server(ws) -> int:
    """The code of the close frame the server sent; fails if the connection just dropped."""
    with pytest.raises(ConnectionClosed) as closed:
        await recv_until(ws, "never")
    assert closed.value.rcvd is not None, "the connection dropped without a close frame"
    return closed.value.rcvd.code


@pytest.mark.parametrize(
    ("frame", "text", "code"),
    [
        ("{" + " " * ONE_MIB + "}", None, 1009),  # over 1 MiB: not read at all (docs/protocol.md)
        (b'{"message": "\xed\xa0\x80"}', True, 1007),  # a text frame that is not UTF-8 (RFC 6455)
    ],
    ids=["over-1-MiB", "text-not-utf8"],
)
async def test_frames_the_server_will_not_read_close_the_socket_with_a_code(
    stack, session, redis_client, logs_from, frame, text, code
):
    room = f"fuzz-{uuid.uuid4().hex[:8]}"
    async with stack.connect(f"/ws/chat/{room}/", session) as ws:
        await recv_until(ws, protocol.CHAT_HISTORY)
        await ws.send(frame, text=text)
        assert await closed_by_server(ws) == code
    wait_until(
        lambda: not leftovers(redis_client, [room]), f"left in Redis: {leftovers(redis_client, [room])}"
    )
    assert not tracebacks(stack, logs_from)


async def test_frames_just_under_the_read_limit_get_frame_too_large(stack, session):
    async with stack.connect("/ws/status/", session) as ws:
        await recv_until(ws, protocol.STATUS_SNAPSHOT)
        reply = await answer(ws, "[" * (ONE_MIB - 1), STATUS_ANSWERS)
        assert reply["code"] == protocol.ErrorCode.FRAME_TOO_LARGE
