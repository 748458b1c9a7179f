"""A chat client that behaves as ``project/static/fleetchat/chat.js`` does, for fault tests.

It reconnects with jittered backoff, resumes from the last offset it has without a hole,
follows ``chat.position``, waits briefly for a message that arrives ahead of a hole, and sends
again (same ``client_id``) whatever the server has not echoed within a few seconds. It records
every message with its arrival time, so a test can say what was lost, doubled or late.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .stack import Stack

log = logging.getLogger("faults")

GAP_WAIT_S = 0.5
RESEND_AFTER_S = 3.0
BACKOFF_MAX_S = 2.0


@dataclass
class ChatClient:
    stack: Stack
    session: str
    room: str
    name: str
    by_offset: dict[int, dict[str, Any]] = field(default_factory=dict)
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, offset) of each new message
    deliveries: int = 0  # every chat.message or history entry received, repeats included
    last_offset: int = 0
    joined: bool = False
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)  # client_id -> {text, sent_at}
    sent: list[str] = field(default_factory=list)  # client_ids, in the order written
    closes: list[int | None] = field(default_factory=list)
    closed_at: list[float] = field(default_factory=list)  # monotonic, one per entry of closes
    ws: Any = None

    # --- running --------------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected until cancelled."""
        failures = 0
        while True:
            try:
                where = f"?after_offset={self.last_offset}" if self.joined else ""
                async with self.stack.connect(f"/ws/chat/{self.room}/{where}", self.session) as ws:
                    self.ws = ws
                    failures = 0
                    for client_id in list(self.pending):
                        await self.write(client_id)
                    await self.read(ws)
            except ConnectionClosed as closed:
                self.closes.append(closed.rcvd.code if closed.rcvd else None)
                self.closed_at.append(time.monotonic())
            except (TimeoutError, OSError, InvalidHandshake, InvalidStatus):
                pass
            self.ws = None
            failures += 1
            await asyncio.sleep(random.uniform(0, min(BACKOFF_MAX_S, 0.2 * 2**failures)))

    async def read(self, ws) -> None:
        gap_timer: asyncio.Task | None = None
        async for raw in ws:
            frame = json.loads(raw)
            kind = frame["type"]
            if kind == "chat.history":
                if frame["kind"] == "join" and not self.joined:
                    self.joined = True
                    self.last_offset = frame["messages"][0]["offset"] - 1 if frame["messages"] else 0
                for message in frame["messages"]:
                    self.take(message)
            elif kind == "chat.message":
                self.take(frame)
            elif (
                kind == "error" and frame["code"] == "server_busy" and frame.get("client_id") in self.pending
            ):
                self.pending[frame["client_id"]]["sent_at"] = 0.0
            if self.has_hole(frame) and (gap_timer is None or gap_timer.done()):
                gap_timer = asyncio.create_task(self.resume_soon())

    def has_hole(self, frame: dict[str, Any]) -> bool:
        ahead = any(offset > self.last_offset for offset in self.by_offset)
        return ahead or (frame["type"] == "chat.position" and frame["offset"] > self.last_offset)

    async def resume_soon(self) -> None:
        await asyncio.sleep(GAP_WAIT_S)
        await self.resume()

    async def resume(self) -> None:
        if self.ws is not None:
            await self.ws.send(json.dumps({"type": "chat.resume", "after_offset": self.last_offset}))

    def take(self, message: dict[str, Any]) -> None:
        self.deliveries += 1
        self.pending.pop(message.get("client_id"), None) if message["user"] == self.name else None
        if message["offset"] not in self.by_offset:
            self.by_offset[message["offset"]] = message
            self.arrivals.append((time.monotonic(), message["offset"]))
        while self.last_offset + 1 in self.by_offset:
            self.last_offset += 1

    # --- sending -----------------------------------------------------------------------

    async def say(self, text: str) -> None:
        client_id = f"{self.name}-{uuid.uuid4().hex[:12]}"
        self.pending[client_id] = {"text": text, "sent_at": 0.0}
        self.sent.append(client_id)
        await self.write(client_id)

    async def write(self, client_id: str) -> None:
        entry = self.pending.get(client_id)
        if entry is None or self.ws is None:
            return
        entry["sent_at"] = time.monotonic()
        with contextlib.suppress(ConnectionClosed):  # sent again after the reconnect
            await self.ws.send(
                json.dumps({"type": "chat.message", "message": entry["text"], "client_id": client_id})
            )

    async def resend_forever(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            for client_id, entry in list(self.pending.items()):
                if time.monotonic() - entry["sent_at"] >= RESEND_AFTER_S:
                    await self.write(client_id)

    # --- what it saw ---------------------------------------------------------------------

    def shown(self) -> list[dict[str, Any]]:
        """The room as this client shows it: every message it has, in offset order."""
        return [self.by_offset[offset] for offset in sorted(self.by_offset)]

    def longest_gap_s(self, since: float, until: float) -> float:
        moments = [since] + [at for at, _ in self.arrivals if since <= at <= until] + [until]
        return max(later - earlier for earlier, later in itertools.pairwise(moments))

    def first_after(self, moment: float) -> float | None:
        later = [at for at, _ in self.arrivals if at > moment]
        return min(later) - moment if later else None


# --- a conversation through a fault ------------------------------------------------------


def chat_stack(tmp_path_factory, redis_url: str, **env: str) -> Iterator[Stack]:
    """The real processes with two workers, users alice and bob, no chat rate limit in the way,
    on a Redis made for this stack alone."""
    from .conftest import make_stack

    for stack in make_stack(
        tmp_path_factory,
        redis_url,
        instances={"worker": 2},
        flush=False,
        CHAT_RATE_LIMIT_COUNT="10000",
        EDGE_MESSAGES_PER_S="100",
        EDGE_READS_PER_S="20",
        **env,
    ):
        stack.create_users("alice", "bob")
        yield stack


MESSAGES_EACH = 200
RATE_PER_S = 20
FAULT_AFTER_S = 3


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
        "shell",
        "-c",
        f"from workers.models import Message; print(Message.objects.filter(room={seen['room']!r}).count())",
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
