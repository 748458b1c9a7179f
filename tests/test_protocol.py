"""The client-frame checkers in project/protocol.py."""

import pytest

from project import protocol
from project.protocol import ErrorCode, ProtocolError


def code_of(call, *args) -> str:
    with pytest.raises(ProtocolError) as raised:
        call(*args)
    return raised.value.code


def test_tutorial_frame_is_read_as_chat_message():
    frame = protocol.decode_client_frame('{"message": "hi"}', protocol.CHAT_CLIENT_TYPES)
    assert frame == {"type": "chat.message", "message": "hi"}


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (None, ErrorCode.INVALID_JSON),
        ("nope", ErrorCode.INVALID_JSON),
        ('"a string"', ErrorCode.INVALID_JSON),
        ('{"type": "status.resync"}', ErrorCode.UNKNOWN_TYPE),
        ("{}", ErrorCode.UNKNOWN_TYPE),
        ('{"message": "' + "é" * 40000 + '"}', ErrorCode.FRAME_TOO_LARGE),
    ],
)
def test_decode_rejects(text, code):
    assert code_of(protocol.decode_client_frame, text, protocol.CHAT_CLIENT_TYPES) == code


def test_unknown_type_echoes_client_id():
    with pytest.raises(ProtocolError) as raised:
        protocol.decode_client_frame('{"type": "x", "client_id": "c9"}', protocol.CHAT_CLIENT_TYPES)
    assert raised.value.frame()["client_id"] == "c9"


def test_chat_message_is_trimmed():
    assert protocol.check_chat_message({"message": "  hi \n", "client_id": "a"}, 10) == ("hi", "a")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"message": None}, ErrorCode.INVALID_MESSAGE),
        ({"message": " \t\n"}, ErrorCode.INVALID_MESSAGE),
        ({"message": "x" * 11}, ErrorCode.MESSAGE_TOO_LONG),
        ({"message": "x", "client_id": ""}, ErrorCode.INVALID_MESSAGE),
        ({"message": "x", "client_id": "c" * 65}, ErrorCode.INVALID_MESSAGE),
    ],
)
def test_chat_message_rejects(frame, code):
    assert code_of(protocol.check_chat_message, frame, 10) == code


def test_history_defaults_and_bounds():
    assert protocol.check_chat_history({"before_id": 9}) == (9, protocol.HISTORY_ON_JOIN)
    assert protocol.check_chat_history({"before_id": 9, "limit": 100}) == (9, 100)
    for bad in ({"before_id": True}, {"before_id": 9, "limit": 0}, {"before_id": 9, "limit": 101}, {}):
        assert code_of(protocol.check_chat_history, bad) == ErrorCode.INVALID_MESSAGE


def test_resume_bounds():
    assert protocol.check_chat_resume({"after_id": 0}) == ("id", 0)
    assert protocol.resume_offset(b"after_offset=41") == 41
    assert [
        protocol.resume_offset(q)
        for q in (b"", b"after_offset=-1", b"after_offset=x", b"after_offset=1&after_offset=2")
    ] == [None] * 4
    assert protocol.check_chat_resume({"after_offset": 7}) == ("offset", 7)
    assert protocol.check_chat_resume({"after_offset": 7, "after_id": 3}) == ("offset", 7)
    assert code_of(protocol.check_chat_resume, {"after_id": 1.5}) == ErrorCode.INVALID_MESSAGE
    assert code_of(protocol.check_chat_resume, {"after_offset": -1}) == ErrorCode.INVALID_MESSAGE
    assert code_of(protocol.check_chat_resume, {}) == ErrorCode.INVALID_MESSAGE


def test_relay_carries_the_encoded_frame():
    message = protocol.relay({"type": "chat.message", "message": "<b>"})
    assert message == {"type": "chat.message", "text": '{"type":"chat.message","message":"<b>"}'}


def test_rate_limited_frame_has_retry_after():
    frame = ProtocolError(ErrorCode.RATE_LIMITED, "slow down", "c1", retry_after=1.5).frame()
    assert frame == {
        "type": "error",
        "code": "rate_limited",
        "detail": "slow down",
        "client_id": "c1",
        "retry_after": 1.5,
    }
