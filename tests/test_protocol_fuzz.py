"""Random client frames against the checkers in project/protocol.py (hypothesis).

Whatever a client sends, a checker either returns a valid result or raises ``ProtocolError``
(which becomes an ``error`` frame); any other exception would be a traceback in a web or worker
process. The frames: JSON of every shape (huge integers, NaN and Infinity literals, odd Unicode,
lone surrogates, duplicate keys, deep nesting) and text or bytes that are not JSON at all.
``tests/test_consumer_fuzz.py`` sends the same frames to the real consumers.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from project import protocol
from project.protocol import ProtocolError

CLIENT_TYPES = (protocol.CHAT_CLIENT_TYPES, protocol.STATUS_CLIENT_TYPES)
KNOWN_TYPES = [
    *sorted(protocol.CHAT_CLIENT_TYPES | protocol.STATUS_CLIENT_TYPES),
    protocol.CHAT_JOIN,
    protocol.STATUS_JOIN,
    protocol.ERROR,
    "chat.Message",
    "chat.message\x00",
    "",
]
FIELDS = ("message", "client_id", "before_id", "limit", "after_offset", "after_id")

# --- Strategies (tests/test_consumer_fuzz.py uses them too) ------------------------------------

# Near the edges a checker must mind: bool-as-int, 0, BIGINT and uint64 limits, beyond any of them.
edge_ints = st.sampled_from(
    [0, 1, -1, 100, 101, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**400]
)
odd_text = st.sampled_from(["\x00", "\u202e", "\ufeff", "²", "١٢", "𝟙", "9" * 30])
# What a JSON decoder can hand a checker: finite floats, no lone surrogates.
decoded_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    edge_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -0.0, 5e-324, 1.0, 50.0]),
    st.text(),
    odd_text,
)
# What a client can write besides: NaN, Infinity, lone surrogates.
wire_scalars = (
    decoded_scalars | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(["\ud800", "\udfff"])
)


def json_values(scalars: st.SearchStrategy) -> st.SearchStrategy:
    def containers(children: st.SearchStrategy) -> st.SearchStrategy:
        return st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)

    return st.recursive(scalars, containers, max_leaves=12)


def frame_dicts(values: st.SearchStrategy) -> st.SearchStrategy:
    """Objects with the fields of client frames (and others), each of any value."""
    return st.builds(
        lambda known, extra: {**extra, **known},
        st.fixed_dictionaries(
            {}, optional={"type": st.sampled_from(KNOWN_TYPES) | values, **dict.fromkeys(FIELDS, values)}
        ),
        st.dictionaries(st.text(max_size=8), values, max_size=3),
    )


decoded_frames = frame_dicts(json_values(decoded_scalars))
wire_values = json_values(wire_scalars)


def encode_loosely(value: Any, ascii_only: bool) -> str:
    """JSON as a careless or hostile client writes it: NaN and Infinity literals, integers of any
    size, lone surrogates either escaped (``ascii_only``) or raw."""
    return json.dumps(value, allow_nan=True, ensure_ascii=ascii_only)


def with_duplicate_keys(pairs: list[tuple[str, Any]]) -> str:
    return "{" + ",".join(f"{json.dumps(key)}:{json.dumps(value)}" for key, value in pairs) + "}"


frame_texts = st.one_of(
    st.builds(encode_loosely, frame_dicts(wire_values), st.booleans()),
    st.builds(encode_loosely, wire_values, st.booleans()),
    st.builds(
        with_duplicate_keys, st.lists(st.tuples(st.sampled_from(["type", *FIELDS]), wire_values), max_size=6)
    ),
    st.builds(
        lambda depth, bracket: bracket * depth, st.integers(1, 40_000), st.sampled_from(["[", '{"type":['])
    ),
    st.builds(lambda depth: '{"a":' * depth + "1" + "}" * depth, st.integers(1, 2_000)),
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
    # Just under and just over the size a consumer reads.
    st.builds(
        lambda n: '{"message": "' + "x" * (protocol.MAX_FRAME_BYTES + n) + '"}', st.sampled_from([-16, 0])
    ),
)

# Frames that once crashed a handler (issue 13) or a query; every run tries them first.
CRASHERS = [
    '{"type": ["chat.message"]}',
    '{"type": {"a": 1}, "client_id": "c1"}',
    '{"type": "chat.history", "before_id": 18446744073709551615}',
    '{"type": "chat.resume", "after_id": 9223372036854775808}',
    '{"message": "\\ud800"}',
    '{"message": "\ud800"}',
]


# --- Properties ----------------------------------------------------------------------------------


def answered_or_refused(text: str | None) -> None:
    """What a chat or status socket does with ``text``, then what a worker does with the frame."""
    for allowed in CLIENT_TYPES:
        try:
            frame = protocol.decode_client_frame(text, allowed)
        except ProtocolError as error:
            assert protocol.encode(error.frame())
            continue
        assert isinstance(frame, dict) and frame["type"] in allowed
        checked_or_refused(frame)


def checked_or_refused(frame: dict[str, Any]) -> None:
    """Every worker-side checker on ``frame``: a result in range, or ``ProtocolError``."""

    def attempt(check, *args):
        try:
            return check(*args)
        except ProtocolError as error:
            assert protocol.encode(error.frame())
            return None

    client_id = attempt(protocol.check_client_id, frame)
    assert client_id is None or (
        isinstance(client_id, str) and 0 < len(client_id) <= protocol.CLIENT_ID_MAX_CHARS
    )
    message = attempt(protocol.check_chat_message, frame, 2000)
    if message is not None:
        text, _ = message
        assert isinstance(text, str) and 0 < len(text) <= 2000
    history = attempt(protocol.check_chat_history, frame)
    if history is not None:
        before_id, limit = history
        assert 1 <= before_id <= protocol.INT_FIELD_MAX and 1 <= limit <= protocol.HISTORY_PAGE_MAX
    resume = attempt(protocol.check_chat_resume, frame)
    if resume is not None:
        position, after = resume
        assert position in ("offset", "id") and 0 <= after <= protocol.INT_FIELD_MAX
    view = attempt(protocol.check_status_view, frame)
    if view is not None:
        assert_a_view(view)


def assert_a_view(view: protocol.StatusView) -> None:
    """A view whose group the channel layer takes (its names are bounded and spelt narrowly)."""
    assert 1 <= view.page <= protocol.STATUS_PAGE_MAX
    assert view.state is None or view.state in protocol.MACHINE_STATES
    assert view.search is None or (
        protocol.STATUS_SEARCH_RE.fullmatch(view.search) and view.search == view.search.lower()
    )
    assert len(view.group) < 100 and re.fullmatch(r"[a-zA-Z\d\-_.]+", view.group)


FUZZ = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.one_of(st.none(), frame_texts))
def test_decoder_answers_every_frame_or_refuses_it(text):
    answered_or_refused(text)


@pytest.mark.parametrize("text", CRASHERS)
def test_frames_that_once_crashed_are_refused(text):
    answered_or_refused(text)


@FUZZ
@given(decoded_frames)
@example({"before_id": 2**64 - 1})
@example({"after_offset": 2**63, "after_id": 1})
@example({"message": "x", "client_id": ["a"], "limit": 50.0, "before_id": 1e308})
def test_checkers_answer_any_values_or_refuse_them(frame):
    checked_or_refused(frame)


@FUZZ
@given(
    st.one_of(st.binary(max_size=80), st.builds(lambda v: f"after_offset={v}".encode(), st.text(max_size=24)))
)
@example(b"after_offset=%C2%B2")
@example("after_offset=١٢".encode())
@example(b"after_offset=9999999999999999999")
def test_resume_offset_is_a_bigint_or_none(query_string):
    offset = protocol.resume_offset(query_string)
    assert offset is None or 0 <= offset <= protocol.INT_FIELD_MAX


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=80),
        st.builds(
            lambda name, value: f"{name}={value}".encode(),
            st.sampled_from(["page", "state", "search"]),
            st.text(max_size=50),
        ),
    )
)
@example(b"page=%C2%B2")
@example(b"page=2&page=3")
@example(b"search=" + b"x" * 41)
def test_a_status_url_names_a_view_or_none_or_is_refused(query_string):
    try:
        view = protocol.status_view_from_query(query_string)
    except ProtocolError as error:
        assert protocol.encode(error.frame())
        return
    if view is not None:
        assert_a_view(view)


# --- The report API's shortcut past the NUL walk (project/reports.py) ---------------------------


@given(json_values(decoded_scalars | st.text(alphabet=st.sampled_from("a\x00\\u0"))))
@settings(max_examples=300)
def test_a_nul_in_a_report_is_never_missed_by_the_raw_text_shortcut(value):
    """``may_hold_nul`` may say yes wrongly (the walk then runs) but never no wrongly, whatever
    the JSON text's escapes: a NUL decoded from it is always looked for."""
    from project.reports import may_hold_nul

    texts = [json.dumps(value).encode(), json.dumps(value, ensure_ascii=False).encode()]
    with contextlib.suppress(TypeError):  # integers past 64 bits
        texts.append(orjson.dumps(value))
    for raw in texts:
        try:
            decoded = orjson.loads(raw)
        except orjson.JSONDecodeError:  # the API refuses it before any check
            continue
        if protocol.has_nul(decoded):
            assert may_hold_nul(raw)
