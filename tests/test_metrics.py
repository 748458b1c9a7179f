"""Prometheus metrics over the real processes: web's /metrics (both uvicorn processes summed),
the worker's and the scheduler's own ports; counters move as traffic flows; none is public."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import urllib.error
import urllib.request
import uuid

import psutil
import pytest
import redis
from websockets.exceptions import ConnectionClosed, InvalidStatus

from project import embedded_redis, keys

from . import scrape as prometheus
from .conftest import make_stack
from .scrape import Samples, get, moved, value
from .stack import ROOT, Stack, recv_json, send_json

pytestmark = pytest.mark.integration

METRICS_TOKEN = "metrics-test-token-7c1d"
FLEET_TOKEN = "metrics-test-fleet-token"


def start_with_metrics_port(stack: Stack, name: str) -> None:
    """(Re)start ``name`` serving its metrics on a port of its own: two processes on one host
    cannot share one METRICS_PORT."""
    if name in stack.processes:
        stack.stop(name)
    stack.metrics_ports.setdefault(name, embedded_redis.free_port())
    stack.env["METRICS_PORT"] = str(stack.metrics_ports[name])
    try:
        stack.start(name)
    finally:
        del stack.env["METRICS_PORT"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url):
    """The Procfile's processes with METRICS_TOKEN set; the worker and the scheduler are
    restarted with a METRICS_PORT each."""
    stacks = make_stack(tmp_path_factory, redis_url, METRICS_TOKEN=METRICS_TOKEN, FLEET_TOKEN=FLEET_TOKEN)
    stack = next(stacks)
    try:
        stack.metrics_ports = {}
        for name in ("worker", "scheduler"):
            start_with_metrics_port(stack, name)
        yield stack
    finally:
        next(stacks, None)  # make_stack stops the processes


@pytest.fixture(scope="module")
def session(stack: Stack) -> str:
    stack.create_users("watcher")
    return stack.login("watcher")


def port_url(stack: Stack, name: str) -> str:
    return f"http://127.0.0.1:{stack.metrics_ports[name]}/metrics"


def scrape(url: str) -> Samples:
    return prometheus.scrape(url, METRICS_TOKEN)


def scrape_until(url: str, holds, timeout_s: float = 10) -> Samples | None:
    return prometheus.scrape_until(url, holds, METRICS_TOKEN, timeout_s)


def wait_for(check, timeout_s: float = 10, every_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(every_s)
    return True


async def frames_until(ws, last, timeout_s: float = 5) -> int:
    """Read until a frame for which ``last(frame)`` holds; how many frames were read."""
    count = 0
    while True:
        count += 1
        if last(json.loads(await asyncio.wait_for(ws.recv(), timeout_s))):
            return count


async def drain(ws, quiet_s: float = 0.3) -> int:
    """Read until ``quiet_s`` passes without a frame; how many frames were read."""
    count = 0
    while True:
        try:
            await asyncio.wait_for(ws.recv(), quiet_s)
        except TimeoutError:
            return count
        count += 1


def report(stack: Stack, name: str, body: bytes, token: str | None = FLEET_TOKEN) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"{stack.base_url}/api/machines/{name}/report", data=body, method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


# --- who may read them -----------------------------------------------------------------------


def test_metrics_are_refused_without_the_token_or_from_a_foreign_address(stack):
    web = f"{stack.base_url}/metrics"
    for url in (web, port_url(stack, "worker"), port_url(stack, "scheduler")):
        scrape(url)  # up, and answers the token from loopback
        for token in (None, "wrong-token"):
            status, body, headers = get(url, token=token)
            assert (status, json.loads(body)["error"]) == (401, "unauthorized"), url
            assert headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
    # uvicorn believes X-Forwarded-For from 127.0.0.1 (the front proxy): the client is foreign.
    status, body, _ = get(web, METRICS_TOKEN, forwarded_for="203.0.113.9")
    assert (status, json.loads(body)["error"]) == (403, "forbidden")
    assert get(web, METRICS_TOKEN, forwarded_for="127.0.0.1")[0] == 200


# --- web --------------------------------------------------------------------------------------


async def test_sockets_handshakes_and_frames_are_counted_over_both_web_processes(stack, session):
    web = f"{stack.base_url}/metrics"
    before = scrape(web)
    room = f"metrics-{uuid.uuid4().hex[:8]}"
    chat = await stack.connect(f"/ws/chat/{room}/", session)
    assert (await recv_json(chat))["type"] == "chat.history"
    status = await stack.connect("/ws/status/", session)
    assert (await recv_json(status))["type"] == "status.snapshot"
    with pytest.raises(InvalidStatus):
        await stack.connect(f"/ws/chat/{room}/")  # no session: refused
    with pytest.raises(InvalidStatus):
        await stack.connect(f"/ws/chat/{room}/", session, origin="http://elsewhere.example")
    await send_json(chat, {"type": "chat.message", "message": "counted", "client_id": "m1"})
    received = {
        "chat": 1 + await frames_until(chat, lambda frame: frame.get("client_id") == "m1"),
        "status": 1,
    }

    during = scrape(web)
    assert moved(before, during, "fleetchat_handshakes_total", kind="chat", outcome="accepted") == 1
    assert moved(before, during, "fleetchat_handshakes_total", kind="status", outcome="accepted") == 1
    assert moved(before, during, "fleetchat_handshakes_total", kind="chat", outcome="unauthenticated") == 1
    assert moved(before, during, "fleetchat_handshakes_total", kind="none", outcome="bad_origin") == 1
    assert (
        value(during, "fleetchat_sockets_open", kind="chat")
        == value(before, "fleetchat_sockets_open", kind="chat") + 1
    )
    assert (
        value(during, "fleetchat_sockets_open", kind="status")
        == value(before, "fleetchat_sockets_open", kind="status") + 1
    )

    # Every frame a client reads was counted once, by whichever process wrote it. Status updates
    # and chat positions keep coming, so compare at a quiet moment, a few times if need be.

    async def counted_as_received() -> bool:
        received["chat"] += await drain(chat)
        received["status"] += await drain(status)
        now = scrape(web)
        return all(
            moved(before, now, "fleetchat_frames_delivered_total", kind=kind) == n
            for kind, n in received.items()
        )

    for _ in range(10):
        if await counted_as_received():
            break
    else:
        now = scrape(web)
        pytest.fail(
            f"received {received}, counted chat "
            f"{moved(before, now, 'fleetchat_frames_delivered_total', kind='chat')}, status "
            f"{moved(before, now, 'fleetchat_frames_delivered_total', kind='status')}"
        )

    await chat.close()
    await status.close()
    after = scrape_until(
        web,
        lambda now: (
            value(now, "fleetchat_sockets_open", kind="chat")
            == value(before, "fleetchat_sockets_open", kind="chat")
        ),
    )
    assert after, "the chat socket is still counted open"
    assert value(after, "fleetchat_sockets_open", kind="status") == value(
        before, "fleetchat_sockets_open", kind="status"
    )


def test_reports_are_counted_by_status_code(stack):
    web = f"{stack.base_url}/metrics"
    before = scrape(web)
    assert report(stack, "node-m1", b'{"state": "provisioning", "progress": 5}') == 202
    assert report(stack, "node-m1", b'{"state": "exploded"}') == 400
    assert report(stack, "node-m1", b'{"state": "pending"}', token=None) == 401
    after = scrape(web)
    counted = {
        code: moved(before, after, "fleetchat_api_reports_total", endpoint="machine_report", code=code)
        for code in ("202", "400", "401")
    }
    assert counted == {"202": 1, "400": 1, "401": 1}


async def test_a_killed_web_process_drops_out_of_the_open_sockets(stack, session):
    """Each uvicorn process counts its own sockets; when one dies its count must go with it
    (its counters stay in the sums: a counter never goes down)."""
    web = f"{stack.base_url}/metrics"
    before = scrape(web)
    sockets = [await stack.connect("/ws/status/", session) for _ in range(8)]
    for ws in sockets:
        await recv_json(ws)
    open_before = value(before, "fleetchat_sockets_open", kind="status")
    assert wait_for(lambda: value(scrape(web), "fleetchat_sockets_open", kind="status") == open_before + 8)

    # The uvicorn process that serves the first socket, and which of ours it serves.
    client_ports = {ws.local_address[1] for ws in sockets}
    served = {
        child: {c.raddr.port for c in child.net_connections("tcp") if c.raddr and c.laddr.port == stack.port}
        & client_ports
        for child in psutil.Process(stack.processes["web"].pid).children()
    }
    victim = next(child for child, ports in served.items() if sockets[0].local_address[1] in ports)
    survivors = 8 - len(served[victim])
    victim.send_signal(signal.SIGKILL)
    for ws in sockets:
        if ws.local_address[1] in served[victim]:
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
    after = scrape_until(
        web, lambda now: value(now, "fleetchat_sockets_open", kind="status") == open_before + survivors
    )
    assert after, (
        f"{survivors} sockets left, counted {value(scrape(web), 'fleetchat_sockets_open', kind='status')}"
    )
    for kind in ("chat", "status"):
        assert value(after, "fleetchat_frames_delivered_total", kind=kind) >= value(
            before, "fleetchat_frames_delivered_total", kind=kind
        )
    for ws in sockets:
        await ws.close()


# --- worker and scheduler -------------------------------------------------------------------


async def test_worker_messages_and_their_latency_are_counted(stack, session):
    worker = port_url(stack, "worker")
    before = scrape(worker)
    chat = await stack.connect(f"/ws/chat/metrics-{uuid.uuid4().hex[:8]}/", session)
    await recv_json(chat)
    for n in range(3):
        await send_json(chat, {"type": "chat.message", "message": f"m{n}", "client_id": f"w{n}"})
        await recv_json(chat)
    await chat.close()
    # A message is counted once its handler returns, which is after its broadcast went out: the
    # client may read the third echo a moment before the worker counts it.
    after = scrape_until(
        worker,
        lambda now: (
            moved(before, now, "fleetchat_worker_messages_total", type="chat.message", outcome="ok") >= 3
        ),
    )
    assert after, "the three messages were not all counted"
    assert moved(before, after, "fleetchat_worker_messages_total", type="chat.join", outcome="ok") == 1
    assert moved(before, after, "fleetchat_worker_messages_total", type="chat.message", outcome="ok") == 3
    assert moved(before, after, "fleetchat_worker_handler_seconds_count", type="chat.message") == 3
    assert moved(before, after, "fleetchat_worker_handler_seconds_sum", type="chat.message") > 0
    # Ticks arrive every second: handled, each with a Redis round trip measured.
    later = scrape_until(
        worker,
        lambda now: (
            moved(after, now, "fleetchat_redis_rtt_seconds_count") >= 2
            and moved(after, now, "fleetchat_worker_messages_total", type="status.tick", outcome="ok") >= 2
        ),
    )
    assert later, "ticks or their Redis round trips were not counted"


def test_the_scheduler_reports_its_lease_and_tick_lag(stack):
    scheduler = port_url(stack, "scheduler")
    before = scrape_until(scheduler, lambda now: value(now, "fleetchat_scheduler_leader") == 1)
    assert before, "the only scheduler never reported leading"
    holder, token = (
        redis.Redis.from_url(stack.env["REDIS_URL"]).get(keys.SCHEDULER_LEASE).decode().rsplit(" ", 1)
    )
    assert holder.endswith(f":{stack.processes['scheduler'].pid}")
    assert value(before, "fleetchat_scheduler_fencing_token") == int(token)
    after = scrape_until(scheduler, lambda now: moved(before, now, "fleetchat_tick_lag_seconds_count") >= 2)
    assert after, "no ticks counted in 10 s"
    lag_s = moved(before, after, "fleetchat_tick_lag_seconds_sum") / moved(
        before, after, "fleetchat_tick_lag_seconds_count"
    )
    assert 0 <= lag_s < 0.5


def test_queue_depths_show_what_waits_for_a_stopped_worker(stack):
    """web reads the worker channels' queues in Redis: while the worker is stopped, the
    scheduler's ticks and an agent's report pile up there, and drain once it is back."""
    web = f"{stack.base_url}/metrics"
    assert wait_for(lambda: value(scrape(web), "fleetchat_reports_queue_messages") == 0), (
        "earlier reports never applied"
    )
    stack.stop("worker")
    try:
        assert report(stack, "node-m2", b'{"state": "pending"}') == 202
        piled = scrape_until(
            web, lambda now: value(now, "fleetchat_channel_queue_messages", channel="status") >= 3
        )
        assert piled, "ticks sent to a stopped worker did not show in the status channel's depth"
        assert value(piled, "fleetchat_reports_queue_messages") == 1
    finally:
        start_with_metrics_port(stack, "worker")
    drained = scrape_until(
        web,
        lambda now: (
            value(now, "fleetchat_channel_queue_messages", channel="status") == 0
            and value(now, "fleetchat_reports_queue_messages") == 0
        ),
        timeout_s=20,
    )
    assert drained, "the queues did not drain after the worker came back"


def test_every_metric_the_docs_and_the_dashboard_name_is_served(stack):
    served = {
        name
        for url in (f"{stack.base_url}/metrics", port_url(stack, "worker"), port_url(stack, "scheduler"))
        for name, _ in scrape(url)
    }
    histograms = {name.removesuffix("_count") for name in served if name.endswith("_count")}
    named = set()
    for doc in ("docs/operations.md", "docs/grafana-dashboard.json"):
        named |= {
            re.sub(r"_(bucket|sum|count)$", "", name)
            for name in re.findall(r"fleetchat_[a-z_]+", (ROOT / doc).read_text())
        }
    assert len(named) >= 15
    assert named - served - histograms == set()
