"""Chat rooms end to end: the real Procfile web (uvicorn), worker and scheduler processes, a real WebSocket client."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .stack import Stack, recv_json, recv_until, send_json

pytestmark = pytest.mark.integration

USERS = ("alice", "bob", "carol")


@pytest.fixture(scope="module")
def sessions(stack: Stack) -> dict[str, str]:
    stack.create_users(*USERS)
    return {name: stack.login(name) for name in USERS}


def new_room() -> str:
    return f"room-{uuid.uuid4().hex[:12]}"


async def join(stack: Stack, session: str, room: str | None):
    """Open a socket in ``room`` and read its join history; ``(socket, history frame)``."""
    path = f"/ws/chat/{room}/" if room else "/ws/chat/"
    ws = await stack.connect(path, session)
    history = await recv_json(ws)
    assert history["type"] == "chat.history"
    return ws, history


async def test_two_users_in_one_room_see_the_same_message_id(stack, sessions):
    room = new_room()
    alice, _ = await join(stack, sessions["alice"], room)
    bob, _ = await join(stack, sessions["bob"], room)

    await send_json(alice, {"type": "chat.message", "message": "hello bob", "client_id": "c1"})

    seen_by_alice = await recv_until(alice, "chat.message")
    seen_by_bob = await recv_until(bob, "chat.message")
    assert seen_by_alice == seen_by_bob
    assert seen_by_bob["user"] == "alice"
    assert seen_by_bob["message"] == "hello bob"
    assert seen_by_bob["room"] == room
    assert seen_by_bob["client_id"] == "c1"
    assert isinstance(seen_by_bob["id"], int)
    assert seen_by_bob["ts"].endswith("Z")
    await alice.close()
    await bob.close()


async def test_rooms_are_isolated(stack, sessions):
    room_a, room_b = new_room(), new_room()
    alice, _ = await join(stack, sessions["alice"], room_a)
    bob, _ = await join(stack, sessions["bob"], room_b)

    await send_json(alice, {"type": "chat.message", "message": "only in a"})
    await recv_until(alice, "chat.message")
    await send_json(bob, {"type": "chat.message", "message": "only in b"})

    frame = await recv_until(bob, "chat.message")
    assert frame["message"] == "only in b"
    with pytest.raises(asyncio.TimeoutError):
        await recv_json(alice, timeout_s=0.5)
    await alice.close()
    await bob.close()


async def test_history_on_join_is_oldest_first(stack, sessions):
    room = new_room()
    alice, history = await join(stack, sessions["alice"], room)
    assert history == {
        "type": "chat.history",
        "room": room,
        "kind": "join",
        "messages": [],
        "truncated": False,
    }
    for text in ("one", "two", "three"):
        await send_json(alice, {"message": text})
        await recv_until(alice, "chat.message")

    bob, history = await join(stack, sessions["bob"], room)
    assert [m["message"] for m in history["messages"]] == ["one", "two", "three"]
    assert history["truncated"] is False
    ids = [m["id"] for m in history["messages"]]
    assert ids == sorted(ids)
    await alice.close()
    await bob.close()


async def test_history_pages_backwards(stack, sessions):
    room = new_room()
    alice, _ = await join(stack, sessions["alice"], room)
    sent = []
    for index in range(4):
        await send_json(alice, {"message": f"m{index}"})
        sent.append(await recv_until(alice, "chat.message"))

    await send_json(alice, {"type": "chat.history", "before_id": sent[3]["id"], "limit": 2})
    page = await recv_until(alice, "chat.history")
    assert [m["message"] for m in page["messages"]] == ["m1", "m2"]
    assert page["truncated"] is True
    await alice.close()


async def test_resume_returns_exactly_the_missed_messages(stack, sessions):
    room = new_room()
    alice, _ = await join(stack, sessions["alice"], room)
    bob, _ = await join(stack, sessions["bob"], room)
    await send_json(alice, {"message": "before the drop"})
    last_seen = await recv_until(bob, "chat.message")
    assert (await recv_until(alice, "chat.message")) == last_seen
    await bob.close()

    missed = []
    for text in ("while away 1", "while away 2"):
        await send_json(alice, {"message": text})
        missed.append(await recv_until(alice, "chat.message"))

    bob, _ = await join(stack, sessions["bob"], room)
    await send_json(bob, {"type": "chat.resume", "after_id": last_seen["id"]})
    resumed = await recv_until(bob, "chat.history")
    assert resumed["kind"] == "resume"
    assert [m["id"] for m in resumed["messages"]] == [m["id"] for m in missed]
    assert resumed["truncated"] is False
    await alice.close()
    await bob.close()


async def test_tutorial_frame_works_and_bare_path_joins_lobby(stack, sessions):
    alice, history = await join(stack, sessions["alice"], None)
    assert history["room"] == "lobby"
    await send_json(alice, {"message": "tutorial style"})
    frame = await recv_until(alice, "chat.message")
    assert frame["room"] == "lobby"
    assert frame["message"] == "tutorial style"
    await alice.close()


async def test_resend_with_same_client_id_is_stored_and_relayed_once(stack, sessions):
    room = new_room()
    alice, _ = await join(stack, sessions["alice"], room)
    bob, _ = await join(stack, sessions["bob"], room)

    await send_json(alice, {"type": "chat.message", "message": "once", "client_id": "dup-1"})
    original = await recv_until(alice, "chat.message")
    await send_json(alice, {"type": "chat.message", "message": "once", "client_id": "dup-1"})
    answer = await recv_until(alice, "chat.message")
    assert answer == original

    assert (await recv_until(bob, "chat.message")) == original
    with pytest.raises(asyncio.TimeoutError):
        await recv_json(bob, timeout_s=0.5)

    carol, history = await join(stack, sessions["carol"], room)
    assert [m["id"] for m in history["messages"]] == [original["id"]]
    for ws in (alice, bob, carol):
        await ws.close()


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_json"),
        ('{"type": "chat.message", "message": 42}', "invalid_message"),
        ('{"type": "chat.message", "message": "   "}', "invalid_message"),
        ('{"type": "chat.message", "message": "x", "client_id": 7}', "invalid_message"),
        ('{"type": "chat.message", "message": "' + "x" * 2001 + '"}', "message_too_long"),
        ('{"type": "chat.dance"}', "unknown_type"),
        ('{"type": "chat.history", "before_id": "soon"}', "invalid_message"),
        ('{"type": "chat.history", "before_id": 10, "limit": 101}', "invalid_message"),
        ('{"type": "chat.resume", "after_id": -1}', "invalid_message"),
        ('{"message": "' + "x" * 70000 + '"}', "frame_too_large"),
    ],
)
async def test_bad_frame_gets_its_error_code_and_socket_stays_usable(stack, sessions, raw, code):
    room = new_room()
    alice, _ = await join(stack, sessions["alice"], room)

    await alice.send(raw)
    error = await recv_json(alice)
    assert error["type"] == "error"
    assert error["code"] == code
    assert error["detail"] and "Traceback" not in error["detail"]

    await send_json(alice, {"message": "still here"})
    assert (await recv_until(alice, "chat.message"))["message"] == "still here"
    await alice.close()


async def test_frame_over_1_mib_closes_the_socket_with_1009(stack, sessions):
    alice, _ = await join(stack, sessions["alice"], new_room())
    await alice.send('{"message": "' + "x" * (1024 * 1024) + '"}')
    with pytest.raises(ConnectionClosed) as closed:
        await recv_json(alice)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_error_echoes_client_id(stack, sessions):
    alice, _ = await join(stack, sessions["alice"], new_room())
    await send_json(alice, {"type": "chat.message", "message": "", "client_id": "empty-1"})
    error = await recv_json(alice)
    assert (error["code"], error["client_id"]) == ("invalid_message", "empty-1")
    await alice.close()


async def test_html_payload_comes_back_as_the_same_text(stack, sessions):
    alice, _ = await join(stack, sessions["alice"], new_room())
    payload = '<img src=x onerror=alert(1)><script>alert("x")</script> & &amp;'
    await send_json(alice, {"message": payload})
    assert (await recv_until(alice, "chat.message"))["message"] == payload
    await alice.close()


async def test_rate_limit_answers_with_retry_after_then_lets_through(stack, sessions):
    # The module's stack allows 5 messages per 3 s.
    alice, _ = await join(stack, sessions["alice"], new_room())
    for index in range(5):
        await send_json(alice, {"message": f"fast {index}"})
        await recv_until(alice, "chat.message")

    await send_json(alice, {"message": "one too many", "client_id": "rl"})
    error = await recv_json(alice)
    assert (error["code"], error["client_id"]) == ("rate_limited", "rl")
    assert 0 < error["retry_after"] <= 3

    await asyncio.sleep(error["retry_after"])
    await send_json(alice, {"message": "after waiting"})
    assert (await recv_until(alice, "chat.message"))["message"] == "after waiting"
    await alice.close()


async def test_anonymous_socket_is_refused(stack):
    with pytest.raises(InvalidStatus) as refused:
        await stack.connect("/ws/chat/")
    assert refused.value.response.status_code == 403


async def test_foreign_origin_is_refused(stack, sessions):
    with pytest.raises(InvalidStatus) as refused:
        await stack.connect("/ws/chat/", sessions["alice"], origin="http://evil.example")
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize(
    "path", ["/ws/chat/bad%20room/", "/ws/chat/" + "r" * 65 + "/", "/ws/chat/a/b/", "/ws/nowhere/"]
)
async def test_bad_room_or_path_is_refused(stack, sessions, path):
    with pytest.raises(InvalidStatus) as refused:
        await stack.connect(path, sessions["alice"])
    assert refused.value.response.status_code == 403
