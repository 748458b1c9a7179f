"""The HTTP API against its OpenAPI contract (``/api/openapi.json``), over the real processes.

schemathesis generates requests from the served document, valid and invalid, and checks every
answer: no 5xx, every answer within its declared schema and status codes, no invalid input
accepted (``tests/schemathesis.toml`` says where and why a check is relaxed). Around it, the
cases the contract promises and the server once broke: every answer under ``/api/`` is JSON,
a chunked body over the limit is ``413``, and ``.`` and ``..`` are not machine names.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path

import pytest

from project import protocol
from project.reports import BatchItem, Report

from .conftest import make_stack
from .stack import Stack

pytestmark = pytest.mark.integration

TOKEN = "openapi-contract-token"
CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url):
    yield from make_stack(tmp_path_factory, redis_url, FLEET_TOKEN=TOKEN)


def raw_request(
    stack: Stack,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    chunked=False,
) -> tuple[int, str, bytes]:
    """``(status, content type, body)``; the path is sent as given (``..`` included)."""
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    try:
        if chunked:
            connection.putrequest(method, path)
            for name, value in (headers or {}).items():
                connection.putheader(name, value)
            connection.putheader("Transfer-Encoding", "chunked")
            connection.endheaders()
            assert body is not None
            for start in range(0, len(body), 65536):
                chunk = body[start : start + 65536]
                connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            connection.send(b"0\r\n\r\n")
        else:
            connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def json_answer(answer: tuple[int, str, bytes]) -> tuple[int, dict]:
    status, content_type, body = answer
    assert content_type.startswith("application/json"), (status, content_type, body[:200])
    return status, json.loads(body)


def test_schemathesis_finds_nothing_against_the_real_server(stack, tmp_path):
    """With an agent token. ``/api/status`` takes a login session, which a header given to every
    case would also give to the cases testing its absence: here it is called without one (401);
    its answers to a session are tested in tests/test_status_integration.py."""
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(CONFIG),
        "run",
        stack.base_url + "/api/openapi.json",
        "--max-examples",
        "40",
        "--generation-deterministic",
        "--request-timeout",
        "20",
        "-H",
        f"Authorization: Bearer {TOKEN}",
    ]
    # In a directory of its own: schemathesis keeps a cache where it runs.
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert " passed" in result.stdout, result.stdout[-3000:]


def test_the_document_is_generated_from_the_models_the_server_checks_with(stack):
    status, document = json_answer(raw_request(stack, "GET", "/api/openapi.json"))
    assert (status, document["openapi"]) == (200, "3.1.0")
    schemas = document["components"]["schemas"]
    assert set(schemas["Report"]["properties"]) == set(Report.model_fields)
    assert set(schemas["BatchItem"]["properties"]) == set(BatchItem.model_fields)
    assert schemas["Report"]["properties"]["state"]["enum"] == list(protocol.MACHINE_STATES)
    assert schemas["Report"]["additionalProperties"] is False
    assert set(document["paths"]) == {
        "/api/machines/{name}/report",
        "/api/machines/{name}",
        "/api/reports",
        "/api/status",
        "/api/openapi.json",
        "/healthz",
        "/readyz",
    }


@pytest.mark.parametrize("path", ["/api/nowhere", "/api/machines/a/b/c", "/api/"])
def test_an_unknown_api_path_is_404_in_json(stack, path):
    status, answer = json_answer(raw_request(stack, "GET", path))
    assert (status, answer["error"]) == (404, "not_found")


@pytest.mark.parametrize("path", ["/api/status", "/healthz", "/readyz", "/api/openapi.json"])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_other_methods_on_reads_and_probes_are_405_in_json(stack, path, method):
    """Not a CSRF 403 page: these take GET only, and say so."""
    status, answer = json_answer(
        raw_request(stack, method, path, b"{}", {"Content-Type": "application/json"})
    )
    assert (status, answer["error"]) == (405, "method_not_allowed")


@pytest.mark.parametrize(
    "path, limit",
    [
        ("/api/machines/chunky/report", protocol.MAX_REPORT_BYTES),
        ("/api/reports", protocol.MAX_REPORT_BATCH_BYTES),
    ],
)
def test_a_chunked_body_over_the_limit_is_413_in_json(stack, path, limit):
    body = b'{"state": "ready", "pad": "' + b"x" * (limit + 1024) + b'"}'
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    status, answer = json_answer(raw_request(stack, "POST", path, body, headers, chunked=True))
    assert (status, answer["error"]) == (413, "too_large")


def test_a_chunked_body_under_the_limit_is_read(stack):
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    status, answer = json_answer(
        raw_request(
            stack, "POST", "/api/machines/chunky/report", b'{"state": "ready"}', headers, chunked=True
        )
    )
    assert (status, answer) == (202, {"status": "accepted", "machine": "chunky"})


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_and_dot_dot_are_not_machine_names(stack, name):
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    status, answer = json_answer(
        raw_request(stack, "POST", f"/api/machines/{name}/report", b'{"state": "ready"}', headers)
    )
    assert (status, answer["error"], list(answer["errors"])) == (400, "invalid_report", ["name"])
    status, answer = json_answer(raw_request(stack, "DELETE", f"/api/machines/{name}", None, headers))
    assert (status, answer["error"]) == (400, "invalid_name")
    batch = json.dumps([{"name": name, "report": {"state": "ready"}}]).encode()
    status, answer = json_answer(raw_request(stack, "POST", "/api/reports", batch, headers))
    assert (status, list(answer["errors"][0]["errors"])) == (400, ["name"])
