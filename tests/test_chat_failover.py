"""Chat through its infrastructure failing: two clients talk while a process or Redis dies.

Real Procfile processes (two ``worker`` processes, ``web`` with two uvicorn workers) against a
Redis server this module owns, so that it can kill it. Two clients (``tests/chatclient.py``,
which behave as chat.js does) each send 200 messages at 20 a second with ``client_id``s; a
fault strikes 3 s in. Afterwards every message must be stored once and shown by both clients
exactly once, in offset order, with nobody restarting anything by hand.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from pathlib import Path

import psutil
import pytest

from project import embedded_redis

from .chatclient import ChatClient
from .stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]
log = logging.getLogger("faults")

MESSAGES_EACH = 200
RATE_PER_S = 20
FAULT_AFTER_S = 3
PROCESS_FAULT_MAX_GAP_S = 3.0
REDIS_FAULT_MAX_GAP_S = 10.0


class OwnRedis:
    """A private redis-server on a fixed port that the test can kill and start again, empty."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = embedded_redis.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None
        self.start()

    def start(self) -> None:
        self.process, _ = embedded_redis.start(self.workdir, port=self.port)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory):
    server = OwnRedis(tmp_path_factory.mktemp("own-redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, own_redis):
    stack = Stack(Path(tmp_path_factory.mktemp("stack")), own_redis.url, {"CHAT_RATE_LIMIT_COUNT": "10000"})
    stack.start_all({"worker": 2})
    stack.create_users("alice", "bob")
    try:
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture(scope="module")
def sessions(stack):
    return {name: stack.login(name) for name in ("alice", "bob")}


async def conversation(stack: Stack, sessions: dict[str, str], fault) -> dict:
    """Two clients talk; ``fault(clients)`` (in a thread) strikes 3 s in. What they saw."""
    room = f"fault-{uuid.uuid4().hex[:8]}"
    clients = [ChatClient(stack, sessions[name], room, name) for name in ("alice", "bob")]
    tasks = [asyncio.create_task(job()) for client in clients for job in (client.run, client.resend_forever)]
    try:
        async with asyncio.timeout(15):
            while not all(client.joined for client in clients):
                await asyncio.sleep(0.05)

        async def talk(client: ChatClient) -> None:
            for n in range(MESSAGES_EACH):
                await client.say(f"{client.name} {n}")
                await asyncio.sleep(1 / RATE_PER_S)

        started = time.monotonic()
        talking = asyncio.gather(*(talk(client) for client in clients))
        await asyncio.sleep(FAULT_AFTER_S)
        fault_at = time.monotonic()
        await asyncio.to_thread(fault, clients)
        await talking
        everyone = 2 * MESSAGES_EACH
        async with asyncio.timeout(30):
            while not all(len(client.by_offset) >= everyone and not client.pending for client in clients):
                await asyncio.sleep(0.1)
        ended = time.monotonic()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    seen = {
        "room": room,
        "clients": clients,
        "longest_gap_s": max(client.longest_gap_s(started, ended) for client in clients),
        "fault_to_first_s": max(client.first_after(fault_at) for client in clients),
        "deliveries": sum(client.deliveries for client in clients),
        "closes": [client.closes for client in clients],
    }
    # The figures docs/reliability.md reports (pytest -o log_cli=true -o log_cli_level=INFO shows them).
    log.info("%s", {key: value for key, value in seen.items() if key != "clients"})
    return seen


def assert_exactly_once_in_order(stack: Stack, seen: dict) -> None:
    stored = stack.manage(
        "shell", "-c",
        f"from workers.models import Message; "
        f"print(Message.objects.filter(room={seen['room']!r}).count())",
    )
    assert int(stored.split()[-1]) == 2 * MESSAGES_EACH, "a message was stored twice or not at all"
    views = []
    for client in seen["clients"]:
        shown = client.shown()
        assert [m["offset"] for m in shown] == list(range(1, 2 * MESSAGES_EACH + 1))
        for sender in seen["clients"]:
            # A message lost with a worker is sent again later, so it may land after the
            # sender's next ones: every one once, not necessarily in the order written.
            texts = sorted(m["message"] for m in shown if m["user"] == sender.name)
            assert texts == sorted(f"{sender.name} {n}" for n in range(MESSAGES_EACH)), "lost or doubled"
        views.append([(m["offset"], m["id"]) for m in shown])
    assert views[0] == views[1], "the two clients show the room in different orders"


def serving(stack: Stack, client: ChatClient) -> psutil.Process:
    """The uvicorn worker process that holds ``client``'s connection."""
    port = client.ws.transport.get_extra_info("sockname")[1]
    for child in psutil.Process(stack.processes["web"].pid).children():
        if any(conn.raddr and conn.raddr.port == port for conn in child.net_connections(kind="tcp")):
            return child
    raise AssertionError(f"no web process holds {client.name}'s connection")


async def test_sigkill_of_one_of_two_chat_workers(stack, sessions):
    def fault(clients):
        stack.kill("worker")
        time.sleep(1)
        stack.start("worker", "worker")

    seen = await conversation(stack, sessions, fault)
    assert_exactly_once_in_order(stack, seen)
    assert seen["longest_gap_s"] <= PROCESS_FAULT_MAX_GAP_S, seen


async def test_sigkill_of_one_web_process(stack, sessions):
    seen = await conversation(stack, sessions, lambda clients: serving(stack, clients[1]).send_signal(signal.SIGKILL))
    assert_exactly_once_in_order(stack, seen)
    assert seen["clients"][1].closes, "the killed process did not hold bob's socket"
    assert seen["longest_gap_s"] <= PROCESS_FAULT_MAX_GAP_S, seen


async def test_sigterm_restart_of_web(stack, sessions):
    exits = []

    def fault(clients):
        stopped = time.monotonic()
        assert stack.stop("web", signal.SIGTERM, timeout_s=10) == 0
        exits.append(time.monotonic() - stopped)
        stack.start("web")

    seen = await conversation(stack, sessions, fault)
    assert_exactly_once_in_order(stack, seen)
    assert exits[0] <= 5
    assert all(code in (1012, 1001) for client in seen["clients"] for code in client.closes), "not told to reconnect"
    assert seen["longest_gap_s"] <= PROCESS_FAULT_MAX_GAP_S, seen


async def test_redis_killed_and_restarted_empty(stack, sessions, own_redis):
    def fault(clients):
        own_redis.kill()
        time.sleep(1)
        own_redis.start()

    seen = await conversation(stack, sessions, fault)
    assert_exactly_once_in_order(stack, seen)
    assert seen["longest_gap_s"] <= REDIS_FAULT_MAX_GAP_S, seen
    for name in ("worker", "worker.2", "scheduler", "web"):
        assert stack.processes[name].poll() is None, f"{name} exited:\n{stack.read_log(name)[-2000:]}"


async def test_a_message_stored_but_never_broadcast_reaches_connected_clients(stack, sessions):
    """What a worker killed between commit and broadcast leaves: a stored message nobody was
    sent. The room's position frames make every connected client fetch it, without reconnecting."""
    room = f"lost-{uuid.uuid4().hex[:8]}"
    clients = [ChatClient(stack, sessions[name], room, name) for name in ("alice", "bob")]
    tasks = [asyncio.create_task(client.run()) for client in clients]
    try:
        async with asyncio.timeout(15):
            while not all(client.joined for client in clients):
                await asyncio.sleep(0.05)
        await clients[0].say("seen live")
        async with asyncio.timeout(5):
            while not all(client.last_offset == 1 for client in clients):
                await asyncio.sleep(0.05)
        stack.manage(
            "shell", "-c",
            "from django.db import transaction; from workers.chat import next_offset; "
            "from workers.models import Message\n"
            f"with transaction.atomic(): Message.objects.create(room={room!r}, offset=next_offset({room!r}), "
            "author='carol', body='stored, never broadcast')",
        )
        stored_at = time.monotonic()
        async with asyncio.timeout(5):
            while not all(client.last_offset == 2 for client in clients):
                await asyncio.sleep(0.05)
        delays = [client.first_after(stored_at) for client in clients]
        assert all(client.closes == [] for client in clients), "a client had to reconnect"
        assert [m["message"] for m in clients[1].shown()] == ["seen live", "stored, never broadcast"]
        assert max(delays) <= 5, delays
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
