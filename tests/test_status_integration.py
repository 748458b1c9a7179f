"""The live fleet status end to end: scheduler -> status worker -> group -> sockets, and the API."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid

import pytest

from .conftest import make_stack
from .stack import Stack, recv_json, recv_until, send_json

pytestmark = pytest.mark.integration

TOKEN = "status-test-token-1f2e3d"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url):
    yield from make_stack(tmp_path_factory, redis_url, FLEET_TOKEN=TOKEN, OFFLINE_AFTER="3")


@pytest.fixture(scope="module")
def session(stack: Stack) -> str:
    stack.create_users("operator")
    return stack.login("operator")


def http(stack: Stack, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """``(status, parsed JSON body)`` of a request to the stack's web process."""
    request = urllib.request.Request(stack.base_url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def report(stack: Stack, name: str, body, token: str = TOKEN):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return http(stack, "POST", f"/api/machines/{name}/report", raw, headers)


def snapshot_over_http(stack: Stack, session: str) -> dict:
    status, body = http(stack, "GET", "/api/status", headers={"Cookie": f"sessionid={session}"})
    assert status == 200
    return body


def assert_no_trace(stack: Stack, session: str, name: str) -> None:
    """Nothing named ``name`` reached the fleet. The worker applies reports in order, so once
    a marker sent afterwards is visible, the rejected report would have been too."""
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    assert report(stack, marker, {"state": "ready"})[0] == 202
    deadline = time.monotonic() + 5
    while True:
        names = {m["name"] for m in snapshot_over_http(stack, session)["machines"]}
        if marker in names:
            break
        assert time.monotonic() < deadline, "the marker report never arrived"
        time.sleep(0.1)
    assert name not in names


async def next_update(ws, timeout_s: float = 3) -> dict:
    return await recv_until(ws, "status.update", timeout_s)


async def test_snapshot_then_consecutive_seq(stack, session):
    async with stack.connect("/ws/status/", session) as ws:
        snapshot = await recv_json(ws)
        assert snapshot["type"] == "status.snapshot"
        assert {"epoch", "seq", "ts", "machines", "summary", "system"} <= snapshot.keys()

        updates = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            frame = await recv_json(ws, timeout_s=3)
            if frame["seq"] > snapshot["seq"] or frame["epoch"] != snapshot["epoch"]:
                updates.append(frame)
    seqs = [u["seq"] for u in updates if u["epoch"] == updates[-1]["epoch"]]
    assert len(seqs) >= 9
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    last = updates[-1]
    assert {"epoch", "seq", "ts", "tick_ns", "machines", "removed", "summary", "system"} <= last.keys()
    assert last["system"]["connections"] >= 1
    assert last["system"]["redis"]["rtt_ms"] is not None


async def test_attime_alias_streams_updates(stack, session):
    async with stack.connect("/ws/attime/", session) as ws:
        assert (await recv_json(ws))["type"] == "status.snapshot"
        first, second = await next_update(ws), await next_update(ws)
    assert second["seq"] == first["seq"] + 1


async def test_report_appears_in_next_update_and_in_api_status(stack, session):
    async with stack.connect("/ws/status/", session) as ws:
        await recv_json(ws)
        body = {
            "state": "provisioning",
            "progress": 40,
            "software": [
                {"name": "nginx", "state": "installing", "percent": 40},
                {"name": "redis", "state": "done", "percent": 100},
            ],
        }
        status, answer = report(stack, "web-01", body)
        assert (status, answer["status"]) == (202, "accepted")
        for _ in range(3):
            update = await next_update(ws)
            if update["machines"]:
                break
    machine = update["machines"][0]
    assert machine["name"] == "web-01"
    assert (machine["state"], machine["progress"]) == ("provisioning", 40)
    assert machine["software"] == [
        {"name": "nginx", "state": "installing", "percent": 40},
        {"name": "redis", "state": "done", "percent": 100},
    ]
    assert machine["last_report"].endswith("Z")
    assert update["summary"]["states"]["provisioning"] >= 1

    snapshot = snapshot_over_http(stack, session)
    assert snapshot["type"] == "status.snapshot"
    assert [m for m in snapshot["machines"] if m["name"] == "web-01"] == [machine]


async def test_unchanged_machines_are_not_resent(stack, session):
    async with stack.connect("/ws/status/", session) as ws:
        await recv_json(ws)
        report(stack, "quiet-01", {"state": "ready", "progress": 100})
        update = await next_update(ws)
        while "quiet-01" not in [m["name"] for m in update["machines"]]:
            update = await next_update(ws)
        following = [await next_update(ws) for _ in range(2)]
    assert [u["seq"] for u in following] == [update["seq"] + 1, update["seq"] + 2]
    assert all("quiet-01" not in [m["name"] for m in u["machines"]] for u in following)


async def test_resync_gives_a_fresh_snapshot(stack, session):
    async with stack.connect("/ws/status/", session) as ws:
        first = await recv_json(ws)
        await send_json(ws, {"type": "status.resync"})
        again = await recv_until(ws, "status.snapshot")
        await send_json(ws, {"type": "chat.message", "message": "hi"})
        error = await recv_until(ws, "error")
    assert again["seq"] >= first["seq"]
    assert error["code"] == "unknown_type"


def test_api_status_needs_login(stack):
    status, body = http(stack, "GET", "/api/status")
    assert (status, body["error"]) == (401, "unauthorized")


async def test_anonymous_status_socket_is_refused(stack):
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus):
        await stack.connect("/ws/status/")


@pytest.mark.parametrize(
    ("name", "body", "fields"),
    [
        ("bad-json", b"{nope", {"body"}),
        ("bad-state", {"state": "exploded"}, {"state"}),
        ("no-state", {"progress": 3}, {"state"}),
        ("bad-progress", {"state": "pending", "progress": 101}, {"progress"}),
        (
            "bad-percent",
            {"state": "pending", "software": [{"name": "a", "state": "done", "percent": -1}]},
            {"software[0].percent"},
        ),
        (
            "nan-percent",
            {"state": "pending", "software": [{"name": "a", "state": "done", "percent": "50"}]},
            {"software[0].percent"},
        ),
        (
            "empty-name",
            {"state": "pending", "software": [{"name": "", "state": "done", "percent": 1}]},
            {"software[0].name"},
        ),
        ("bad-software", {"state": "pending", "software": {"name": "a"}}, {"software"}),
        ("bad-types", [1, 2], {"body"}),
        ("bad%20name", {"state": "pending"}, {"name"}),
    ],
)
def test_bad_report_is_400_with_field_errors_and_leaves_no_trace(stack, session, name, body, fields):
    status, answer = report(stack, name, body)
    assert status == 400
    assert answer["error"] == "invalid_report"
    assert fields <= answer["errors"].keys()
    assert_no_trace(stack, session, name.replace("%20", " "))


@pytest.mark.parametrize("token", [None, "wrong-token", ""])
def test_report_without_the_token_is_401(stack, session, token):
    status, answer = report(stack, "intruder", {"state": "pending"}, token=token)
    assert (status, answer["error"]) == (401, "unauthorized")
    assert_no_trace(stack, session, "intruder")


def test_report_over_64_kib_is_413(stack, session):
    body = {
        "state": "pending",
        "software": [{"name": f"pkg-{i}-" + "x" * 90, "state": "queued", "percent": 0} for i in range(600)],
    }
    raw = json.dumps(body).encode()
    assert len(raw) > 64 * 1024
    status, answer = report(stack, "huge", raw)
    assert (status, answer["error"]) == (413, "too_large")
    assert_no_trace(stack, session, "huge")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_are_405(stack, method):
    status, answer = http(
        stack, method, "/api/machines/web-01/report", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert (status, answer["error"]) == (405, "method_not_allowed")


async def test_removed_machine_is_listed_once(stack, session):
    report(stack, "doomed-01", {"state": "pending"})
    async with stack.connect("/ws/status/", session) as ws:
        await recv_json(ws)
        status, _ = http(
            stack, "DELETE", "/api/machines/doomed-01", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert status == 202
        for _ in range(3):
            update = await next_update(ws)
            if update["removed"]:
                break
    assert update["removed"] == ["doomed-01"]


async def test_silent_machine_goes_offline(stack, session):
    # The module's stack marks machines offline after 3 s without a report.
    report(stack, "silent-01", {"state": "provisioning", "progress": 10})
    async with stack.connect("/ws/status/", session) as ws:
        await recv_json(ws)
        deadline = time.monotonic() + 8
        state = None
        while time.monotonic() < deadline and state != "offline":
            update = await next_update(ws)
            for machine in update["machines"]:
                if machine["name"] == "silent-01":
                    state = machine["state"]
    assert state == "offline"


def test_healthz_and_readyz(stack):
    assert http(stack, "GET", "/healthz") == (200, {"status": "ok"})
    status, body = http(stack, "GET", "/readyz")
    assert (status, body["status"], body["failed"]) == (200, "ready", [])


def test_readyz_is_503_naming_the_worker_when_it_is_stopped(stack):
    stack.stop("worker")
    try:
        status, body = http(stack, "GET", "/readyz")
        assert (status, body["failed"]) == (503, ["worker"])
    finally:
        stack.start("worker")
    deadline = time.monotonic() + 10
    while http(stack, "GET", "/readyz")[0] != 200:
        assert time.monotonic() < deadline, "readyz did not recover after the worker restarted"
        time.sleep(0.5)


async def test_scheduler_restart_keeps_the_epoch_and_the_sequence(stack, session):
    """The only scheduler stopped: no updates and readyz names it; started again: the stream
    goes on under the same epoch with the next seq, so a dashboard has nothing to resync."""
    async with stack.connect("/ws/status/", session) as ws:
        await recv_json(ws)
        before = await next_update(ws)
        stack.stop("scheduler")
        with pytest.raises(asyncio.TimeoutError):
            await next_update(ws, timeout_s=2)
        deadline = time.monotonic() + 5
        while (answer := http(stack, "GET", "/readyz"))[0] == 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert (answer[0], answer[1]["failed"]) == (503, ["scheduler"])
        assert answer[1]["checks"]["scheduler"]["instances"] == 0
        stack.start("scheduler")
        after = await next_update(ws, timeout_s=5)
    assert after["epoch"] == before["epoch"]
    assert after["seq"] == before["seq"] + 1
