"""The load tool: many WebSocket clients per process, several processes, loopback only.

Each client process opens its share of the sockets (at a bounded rate), reads every
frame until the deadline and keeps per-socket books; the parent adds the books up.

Modes (what a client expects to hear):

- ``status``: our ``/ws/status/`` (or the S0 server): a snapshot, then one update per
  second with ``seq`` +1 within an ``epoch``. Counts missed and duplicated ``seq`` and the
  latency from ``tick_ns`` to receipt.
- ``original``: the seed design's ``/ws/attime/``: every socket's own loop broadcasts a
  frame to everyone each second, so each client expects N frames a second.
- ``chat``: one room; ``--senders`` of the clients each send ``--rate`` messages a second
  with a ``client_id``; every member checks it got every id exactly once. Latency is
  measured from the server's ``ts`` (ms resolution).

Only 127.0.0.1 / localhost / ::1 targets are accepted; every run ends by its deadline.

    python bench/loadgen.py status --url ws://127.0.0.1:8000/ws/status/ --clients 1000 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import resource
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

import orjson
import websockets

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Books:
    """What one client process saw, summed over its sockets."""

    connected: int = 0
    failed: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    frames: int = 0
    frame_bytes: int = 0
    expected: int = 0
    missed: int = 0
    duplicated: int = 0
    resyncs: int = 0
    # status: the server's own resync notices (this client fell behind) and what they dropped
    server_resyncs: int = 0
    dropped: int = 0
    disconnects: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    # status: from the tick to the worker stamping the update (``ts``), so that a slow
    # worker can be told from a slow fan-out
    worker_lag_ms: list[float] = field(default_factory=list)
    connect_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.failure_reasons[reason] = self.failure_reasons.get(reason, 0) + 1


# Both servers write an update's head first: type, epoch, seq, [ts,] tick_ns (workers/status.py,
# bench/s0_server.py). Reading only the head keeps a 45 KB update of machines as cheap for the
# load tool as S0's padded one; anything else is parsed whole.
UPDATE_HEAD = re.compile(
    r'\{"type": ?"status\.update", ?"epoch": ?"([^"]*)", ?"seq": ?(\d+),(?: ?"ts": ?"([^"]*)",)? ?"tick_ns": ?(\d+)'
)


def read_status_frame(raw: str) -> dict[str, Any]:
    head = UPDATE_HEAD.match(raw)
    if head is None:
        return orjson.loads(raw)
    frame = {"type": "status.update", "epoch": head[1], "seq": int(head[2]), "tick_ns": int(head[4])}
    if head[3] is not None:
        frame["ts"] = head[3]
    return frame


def iso_to_ns(ts: str) -> int:
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1e9)


async def frames_until(ws, deadline: float) -> AsyncIterator[tuple[str, int]]:
    """Every frame ``ws`` receives before ``deadline`` (monotonic), with its wall-clock receipt time.

    One timeout for the whole run rather than ``wait_for`` per frame, which made a task and a
    timer for every frame: at 5,000 sockets that was much of this tool's own CPU, taken from
    the server it measures. The callers do not await between frames, so the timeout always
    lands inside ``recv``."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic())):
            while True:
                raw = await ws.recv()
                yield raw, time.time_ns()
    except TimeoutError:
        return


async def status_client(ws, books: Books, deadline: float, measure_from: float) -> None:
    """Checks every update's ``seq``; counts frames and latency once the warm-up is over.

    Updates a snapshot skipped over (after the server dropped them for a slow client) count as
    missed, like any other gap.
    """
    epoch, seq = None, None
    async for raw, received_ns in frames_until(ws, deadline):
        frame = read_status_frame(raw)
        if frame["type"] == "status.resync":
            books.server_resyncs += 1
            books.dropped += frame.get("dropped", 0)
            continue
        if frame["type"] == "status.snapshot":
            if seq is not None and frame.get("epoch") == epoch and frame["seq"] > seq:
                books.missed += frame["seq"] - seq
            epoch, seq = frame.get("epoch"), frame.get("seq")
            continue
        if frame.get("type") != "status.update":
            continue
        if time.monotonic() >= measure_from:
            books.frames += 1
            books.frame_bytes += len(raw)
            if "ts" in frame:
                books.worker_lag_ms.append((iso_to_ns(frame["ts"]) - frame["tick_ns"]) / 1e6)
            books.latencies_ms.append((received_ns - frame["tick_ns"]) / 1e6)
        if seq is None or frame.get("epoch") != epoch:
            if epoch is not None:
                books.resyncs += 1
            epoch, seq = frame.get("epoch"), frame["seq"]
            continue
        if frame["seq"] <= seq:
            books.duplicated += 1
        else:
            books.missed += frame["seq"] - seq - 1
            seq = frame["seq"]


async def original_client(ws, books: Books, deadline: float, measure_from: float) -> None:
    async for raw, received_ns in frames_until(ws, deadline):
        if time.monotonic() < measure_from:
            continue
        books.frames += 1
        message = orjson.loads(raw)
        if isinstance(message, dict) and "sent_ns" in message:
            books.latencies_ms.append((received_ns - message["sent_ns"]) / 1e6)


async def chat_client(ws, books: Books, deadline: float, options: dict, index: int, seen_ids: set) -> None:
    """A member; the first ``senders`` clients of process 0 also send."""
    sender = options["sender"]
    sent_client_ids: set[str] = set()

    async def send_loop() -> None:
        period = 1 / options["rate"]
        # Start when every member has had time to join; stop early enough for the last
        # messages to reach everyone before the deadline.
        next_at = time.monotonic() + max(0.0, options["send_start_wall"] - time.time())
        counter = 0
        while next_at < deadline - options["drain_s"]:
            await asyncio.sleep(max(0, next_at - time.monotonic()))
            counter += 1
            client_id = f"p{os.getpid()}-c{index}-{counter}"
            sent_client_ids.add(client_id)
            await ws.send(
                json.dumps({"type": "chat.message", "message": f"load {counter}", "client_id": client_id})
            )
            next_at += period

    task = asyncio.create_task(send_loop()) if sender else None
    try:
        async for raw, received_ns in frames_until(ws, deadline):
            frame = orjson.loads(raw)
            if frame.get("type") != "chat.message":
                continue
            books.frames += 1
            if frame["id"] in seen_ids:
                books.duplicated += 1
            seen_ids.add(frame["id"])
            books.latencies_ms.append((received_ns - iso_to_ns(frame["ts"])) / 1e6)
    finally:
        if task:
            task.cancel()
        options.setdefault("sent", set()).update(sent_client_ids)


async def run_clients(options: dict) -> dict:
    books = Books()
    started_cpu = time.process_time()
    deadline = time.monotonic() + (options["deadline_wall"] - time.time())
    measure_from = time.monotonic() + (options["measure_from_wall"] - time.time())
    headers = {"Cookie": f"sessionid={options['session']}"} if options.get("session") else {}
    sockets = []
    per_socket_ids: list[set] = []
    tasks = []

    async def open_one(index: int) -> None:
        began = time.monotonic()
        try:
            ws = await websockets.connect(
                options["url"],
                origin=options["origin"],
                additional_headers=headers,
                open_timeout=options["open_timeout"],
                max_size=None,
                ping_interval=None,
                compression=None,
            )
        except Exception as error:  # every kind of refusal is a data point here
            books.fail(type(error).__name__)
            return
        books.connect_ms.append((time.monotonic() - began) * 1000)
        books.connected += 1
        sockets.append(ws)
        if options["mode"] == "status":
            coroutine = status_client(ws, books, deadline, measure_from)
        elif options["mode"] == "original":
            coroutine = original_client(ws, books, deadline, measure_from)
        else:
            ids: set = set()
            per_socket_ids.append(ids)
            member_options = {**options, "sender": index < options["senders_here"]}
            coroutine = chat_client(ws, books, deadline, member_options, index, ids)
            options.setdefault("_members", []).append(member_options)
        tasks.append(asyncio.create_task(watch(ws, coroutine)))

    async def watch(ws, coroutine) -> None:
        try:
            await coroutine
        except websockets.ConnectionClosed:
            books.disconnects += 1
        finally:
            await ws.close()

    interval = 1 / options["connect_rate"] if options["connect_rate"] else 0
    openers = []
    for index in range(options["clients"]):
        openers.append(asyncio.create_task(open_one(index)))
        if interval:
            await asyncio.sleep(interval)
    await asyncio.gather(*openers)
    await asyncio.gather(*tasks, return_exceptions=True)
    books.cpu_s = time.process_time() - started_cpu
    result = books.__dict__.copy()
    if options["mode"] == "chat":
        sent = set().union(*(member.get("sent", set()) for member in options.get("_members", [])))
        result["sent_client_ids"] = sorted(sent)
        result["ids_per_socket"] = [len(ids) for ids in per_socket_ids]
    return result


def client_process(options: dict, queue: multiprocessing.Queue) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    queue.put(asyncio.run(run_clients(options)))


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 2)


def warmup_s(clients: int, connect_rate: float = 0) -> float:
    """How long the clients take to connect before frames are counted.

    Every client connects first (and gets its snapshot); frames count only after that,
    for ``seconds``. Chat senders start then, and stop 3 s before the end so that the
    last messages reach everyone.
    """
    return clients / connect_rate + 2 if connect_rate else 2 + clients / 500


def run(
    mode: str,
    url: str,
    clients: int,
    seconds: float,
    processes: int = 1,
    session: str | None = None,
    connect_rate: float = 0,
    senders: int = 0,
    rate: float = 1,
    open_timeout: float = 10,
) -> dict[str, Any]:
    """Run the load and return the summed books (see the module docstring)."""
    parsed = urlparse(url)
    if parsed.hostname not in LOOPBACK:
        raise SystemExit(f"refusing to load {parsed.hostname}: loopback targets only")
    origin = f"http://{parsed.hostname}:{parsed.port}"
    processes = max(1, min(processes, clients))
    now = time.time()
    warmup = warmup_s(clients, connect_rate)
    drain_s = 3.0 if mode == "chat" else 0.0
    deadline_wall = now + warmup + seconds + drain_s
    queue: multiprocessing.Queue = multiprocessing.Queue()
    workers = []
    for index in range(processes):
        share = clients // processes + (1 if index < clients % processes else 0)
        options = {
            "mode": mode,
            "url": url,
            "origin": origin,
            "clients": share,
            "seconds": seconds,
            "session": session,
            "connect_rate": connect_rate / processes if connect_rate else 0,
            "senders_here": senders if index == 0 else 0,
            "rate": rate,
            "open_timeout": open_timeout,
            "deadline_wall": deadline_wall,
            "send_start_wall": now + warmup,
            "drain_s": drain_s,
            "measure_from_wall": now + warmup,
        }
        worker = multiprocessing.Process(target=client_process, args=(options, queue), daemon=True)
        worker.start()
        workers.append(worker)
    parts = [queue.get(timeout=deadline_wall - time.time() + 120) for _ in workers]
    for worker in workers:
        worker.join(10)
    return summarise(mode, parts, clients, seconds, senders, rate)


def summarise(
    mode: str, parts: list[dict], clients: int, seconds: float, senders: int, rate: float
) -> dict[str, Any]:
    latencies = [value for part in parts for value in part["latencies_ms"]]
    connect_ms = [value for part in parts for value in part["connect_ms"]]
    worker_lag = [value for part in parts for value in part["worker_lag_ms"]]
    reasons: dict[str, int] = {}
    for part in parts:
        for reason, count in part["failure_reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    summary = {
        "mode": mode,
        "clients": clients,
        "seconds": seconds,
        "connected": sum(part["connected"] for part in parts),
        "failed_handshakes": sum(part["failed"] for part in parts),
        "failure_reasons": reasons,
        "disconnects": sum(part["disconnects"] for part in parts),
        "frames": sum(part["frames"] for part in parts),
        "deliveries_per_s": round(sum(part["frames"] for part in parts) / seconds, 1),
        "mean_frame_bytes": round(
            sum(part["frame_bytes"] for part in parts) / max(1, sum(part["frames"] for part in parts))
        ),
        "missed": sum(part["missed"] for part in parts),
        "duplicated": sum(part["duplicated"] for part in parts),
        "resyncs": sum(part["resyncs"] for part in parts),
        "server_resyncs": sum(part["server_resyncs"] for part in parts),
        "dropped": sum(part["dropped"] for part in parts),
        "latency_ms": {
            "p50": percentile(latencies, 0.50),
            "p99": percentile(latencies, 0.99),
            "max": round(max(latencies), 2) if latencies else None,
            "mean": round(statistics.fmean(latencies), 2) if latencies else None,
        },
        "worker_lag_ms": {
            "p50": percentile(worker_lag, 0.50),
            "p99": percentile(worker_lag, 0.99),
            "max": round(max(worker_lag), 2) if worker_lag else None,
        },
        "connect_ms": {"p50": percentile(connect_ms, 0.5), "p99": percentile(connect_ms, 0.99)},
        "client_cpu_s": round(sum(part["cpu_s"] for part in parts), 2),
        "client_processes": len(parts),
    }
    if mode == "chat":
        sent = set().union(*(part["sent_client_ids"] for part in parts))
        per_socket = [count for part in parts for count in part["ids_per_socket"]]
        summary["messages_sent"] = len(sent)
        # Every member must have seen every stored message exactly once.
        summary["lost"] = sum(max(0, len(sent) - count) for count in per_socket)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["status", "original", "chat"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--session", help="a sessionid cookie value for authenticated endpoints")
    parser.add_argument(
        "--connect-rate", type=float, default=0, help="new sockets per second (0: all at once)"
    )
    parser.add_argument("--senders", type=int, default=0, help="chat: how many members send")
    parser.add_argument("--rate", type=float, default=1, help="chat: messages per second per sender")
    args = parser.parse_args()
    summary = run(
        args.mode,
        args.url,
        args.clients,
        args.seconds,
        args.processes,
        args.session,
        args.connect_rate,
        args.senders,
        args.rate,
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
