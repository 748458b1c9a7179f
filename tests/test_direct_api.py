"""The agent API served from the event loop (project/api/direct.py): the same answers as through
Django's middleware chain, headers included, without its per-request thread.

The integration half runs the real web process; what an agent's report then does is covered by
tests/test_report_api.py and test_status_integration.py, which go through this path too.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json

import pytest
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.urls import resolve

from project.api import direct

from .conftest import make_stack
from .stack import Stack

TOKEN = "direct-api-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
SECURITY_HEADERS = (
    "x-frame-options",
    "content-security-policy",
    "x-content-type-options",
    "referrer-policy",
    "cross-origin-opener-policy",
)


# --- in process ------------------------------------------------------------------------------------


def test_the_header_middleware_is_settings_own_in_its_order():
    names = [f"{kind.__module__}.{kind.__name__}" for kind in direct.HEADER_MIDDLEWARE]
    positions = [settings.MIDDLEWARE.index(name) for name in names]  # ValueError if one is gone
    assert positions == sorted(positions)


def scope(path: str, method: str = "POST", headers: list | None = None) -> dict:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": headers if headers is not None else [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


@pytest.mark.parametrize("path", ["/api/reports", "/api/machines/db-01/report", "/api/machines/db-01"])
def test_the_agent_api_is_served_direct(path):
    assert direct.DirectAgentApi.direct_match(scope(path)) is not None


@pytest.mark.parametrize(
    "path", ["/api/status", "/api/openapi.json", "/api/nothing-here", "/readyz", "/dashboard/", "/"]
)
def test_everything_else_goes_to_django(path):
    calls = []

    async def django_app(scope, receive, send):
        calls.append(scope["path"])

    asyncio.run(direct.DirectAgentApi(django_app)(scope(path), None, None))

    assert calls == [path]


def answered(app: direct.DirectAgentApi, request: ASGIRequest, view) -> tuple[int, dict, dict]:
    match = resolve("/api/reports")
    match.func = view
    response = asyncio.run(app.answer(request, match))
    return response.status_code, dict(response.items()), json.loads(response.content)


def request_for(path: str, **scope_changes) -> ASGIRequest:
    return ASGIRequest({**scope(path), **scope_changes}, io.BytesIO(b""))


def test_a_view_that_raises_is_a_json_500_without_the_traceback(caplog):
    async def broken(request):
        raise RuntimeError("secret detail")

    status, _, body = answered(direct.DirectAgentApi(None), request_for("/api/reports"), broken)

    assert (status, body["error"]) == (500, "internal_error")
    assert "secret detail" not in json.dumps(body)
    assert "secret detail" in caplog.text  # said in the log, for the operator


def test_a_host_not_allowed_is_a_json_400_and_the_view_never_runs():
    ran = []

    async def view(request):
        ran.append(request)

    request = request_for("/api/reports", headers=[(b"host", b"evil.example")])
    status, headers, body = answered(direct.DirectAgentApi(None), request, view)

    assert (status, body["error"]) == (400, "bad_request")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert not ran


def receiving(*messages):
    queue = list(messages)

    async def receive():
        return queue.pop(0)

    return receive


def test_a_body_is_read_whole_in_its_chunks():
    receive = receiving(
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": False},
    )
    assert asyncio.run(direct.read_body(receive, 10)) == b"abcd"


def test_a_body_is_cut_one_byte_past_the_limit_and_read_to_its_end():
    chunks = [{"type": "http.request", "body": b"x" * 100, "more_body": True} for _ in range(5)]
    receive = receiving(*chunks, {"type": "http.request", "body": b"", "more_body": False})

    assert asyncio.run(direct.read_body(receive, 151)) == b"x" * 151


def test_a_client_gone_mid_body_is_none():
    receive = receiving(
        {"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"}
    )
    assert asyncio.run(direct.read_body(receive, 10)) is None


# --- the real web process --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url):
    yield from make_stack(tmp_path_factory, redis_url, FLEET_TOKEN=TOKEN)


def exchange(
    stack: Stack, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, dict, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return (
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            json.loads(response.read() or b"null"),
        )
    finally:
        connection.close()


def comparable(header: str | None) -> set[str]:
    """A header's directives, in any order: django-csp lists the policy's in the order of a set,
    which differs from one web process to the other (each hashes strings its own way)."""
    return {part.strip() for part in (header or "").split(";") if part.strip()}


@pytest.mark.integration
def test_an_agent_answer_has_the_headers_a_django_answer_has(stack):
    _, through_django, _ = exchange(stack, "GET", "/api/openapi.json")
    status, served_direct, _ = exchange(
        stack, "POST", "/api/machines/headers-01/report", b'{"state": "ready"}', AUTH
    )

    assert status == 202
    for name in SECURITY_HEADERS:
        assert comparable(served_direct.get(name)) == comparable(through_django.get(name)) != set(), name
    assert served_direct["content-type"] == "application/json"


@pytest.mark.integration
def test_a_host_not_allowed_is_refused_as_django_refuses_it(stack):
    wrong_host = {**AUTH, "Host": "evil.example"}
    django_status, _, django_body = exchange(stack, "GET", "/api/status", headers=wrong_host)
    status, _, body = exchange(stack, "POST", "/api/reports", b"[]", wrong_host)

    assert (status, body) == (django_status, django_body) == (400, body)
    assert body["error"] == "bad_request"


@pytest.mark.integration
def test_a_chunked_body_over_the_limit_is_413_and_the_connection_answers_again(stack):
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    try:
        chunk = b"[" + b" " * (256 * 1024)
        chunks = iter([chunk] + [b" " * (256 * 1024)] * 12)  # 3.25 MiB, no Content-Length
        connection.request(
            "POST",
            "/api/reports",
            body=chunks,
            headers={**AUTH, "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        response = connection.getresponse()
        assert (response.status, json.loads(response.read())["error"]) == (413, "too_large")
        connection.request("POST", "/api/machines/after-413/report", b'{"state": "ready"}', AUTH)
        assert connection.getresponse().status == 202
    finally:
        connection.close()


@pytest.mark.integration
def test_one_keep_alive_connection_carries_many_reports(stack):
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    try:
        for number in range(50):
            body = json.dumps({"state": "provisioning", "seq": number + 1}).encode()
            connection.request("POST", "/api/machines/keepalive-01/report", body, AUTH)
            response = connection.getresponse()
            assert response.status == 202
            assert response.getheader("Content-Length") == str(len(response.read()))
    finally:
        connection.close()
