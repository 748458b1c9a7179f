"""The report load tool: agents posting progress reports over keep-alive HTTP connections.

Each process holds its share of ``--connections`` open and, on each, sends one request after
another for its share of ``--machines``: one machine's report per request
(``POST /api/machines/<name>/report``) or ``--batch`` machines' per request (``POST /api/reports``).
With ``--seq`` every report carries the machine's next ``seq`` (docs/protocol.md). With ``--rate`` the processes together offer
that many reports a second (open loop, spread over the connections); without it every connection
sends as fast as the answers come back, which measures the ceiling.

The books: requests and reports answered ``202``, refusals by status, request latency, and the
CPU seconds these processes used (the load tool shares the machine with the service).
HTTP/1.1 is spoken directly on asyncio streams, so that the tool costs little per request.

    python bench/reportgen.py --url http://127.0.0.1:8000 --token T --machines 2000 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import LOOPBACK, percentile

PACKAGES = ("base-os", "openssh", "chrony", "nginx", "node-exporter")


@dataclass
class Books:
    requests: int = 0
    reports_accepted: int = 0
    reports_refused: int = 0  # items a batch answered 202 named as refused
    by_status: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    reconnects: int = 0
    cpu_s: float = 0.0


class Fleet:
    """A process's machines: each report is the machine's next step, with its next seq."""

    def __init__(self, names: list[str], with_seq: bool) -> None:
        self.names = names
        self.with_seq = with_seq
        self.seq = dict.fromkeys(names, 0)
        self.cursor = 0

    def next_names(self, count: int) -> list[str]:
        picked = [self.names[(self.cursor + n) % len(self.names)] for n in range(count)]
        self.cursor = (self.cursor + count) % len(self.names)
        return picked

    def report(self, name: str) -> dict:
        self.seq[name] += 1
        step = self.seq[name] % 101
        report = {
            "state": "ready" if step == 100 else "provisioning",
            "progress": step,
            "software": [
                {"name": package, "state": "done" if step == 100 else "installing", "percent": step}
                for package in PACKAGES
            ],
        }
        return {**report, "seq": self.seq[name]} if self.with_seq else report


def request_bytes(host: str, token: str, fleet: Fleet, batch: int) -> bytes:
    if batch == 1:
        name = fleet.next_names(1)[0]
        path, body = f"/api/machines/{name}/report", orjson.dumps(fleet.report(name))
    else:
        path = "/api/reports"
        body = orjson.dumps(
            [{"name": name, "report": fleet.report(name)} for name in fleet.next_names(batch)]
        )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status = int((await reader.readuntil(b"\r\n")).split(b" ", 2)[1])
    length = 0
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def agent_connection(
    options: dict, fleet: Fleet, books: Books, deadline: float, interval_s: float, phase_s: float = 0.0
) -> None:
    """One keep-alive connection sending requests until ``deadline`` (monotonic), paced: one
    every ``interval_s``, the first ``phase_s`` from now."""
    host, port, batch = options["host"], options["port"], options["batch"]
    reader = writer = None
    next_at = time.monotonic() + phase_s
    retrying = False
    while time.monotonic() < deadline:
        if interval_s and not retrying:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval_s
            if time.monotonic() >= deadline:
                break
        retrying = False
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            began = time.perf_counter()
            writer.write(request_bytes(f"{host}:{port}", options["token"], fleet, batch))
            status, body = await read_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            # Refused, reset, or a keep-alive connection the server closed while idle (uvicorn
            # after 5 s; a paced batch connection waits longer than that): again, on a new one.
            books.reconnects += 1
            writer, retrying = None, True
            await asyncio.sleep(0.1)
            continue
        books.latencies_ms.append((time.perf_counter() - began) * 1000)
        books.requests += 1
        books.by_status[status] = books.by_status.get(status, 0) + 1
        if status == 202:
            answer = orjson.loads(body)
            books.reports_accepted += answer.get("accepted", 1)
            books.reports_refused += answer.get("refused", 0)
    if writer is not None:
        writer.close()


async def run_agents(options: dict) -> dict:
    books = Books()
    started_cpu = time.process_time()
    deadline = time.monotonic() + options["seconds"]
    connections = options["connections"]
    per_connection = [options["names"][n::connections] for n in range(connections)]
    # Open loop: each connection offers its share of the rate, in requests, its phase spread
    # over the interval (this process's connections between the other processes'), so that
    # the offered load is even rather than every connection's request at the same instant.
    interval_s = connections * options["batch"] / options["rate"] if options["rate"] else 0.0
    spacing_s = interval_s / connections
    await asyncio.gather(
        *(
            agent_connection(
                options,
                Fleet(names, options["seq"]),
                books,
                deadline,
                interval_s,
                (n + options["offset"]) * spacing_s,
            )
            for n, names in enumerate(per_connection)
            if names
        )
    )
    books.cpu_s = time.process_time() - started_cpu
    return books.__dict__


def agent_process(options: dict, queue: multiprocessing.Queue) -> None:
    import uvloop

    uvloop.install()
    queue.put(asyncio.run(run_agents(options)))


def run(
    url: str,
    token: str,
    machines: int,
    seconds: float,
    connections: int = 64,
    batch: int = 1,
    processes: int = 1,
    rate: float = 0,
    seq: bool = False,
    prefix: str = "node",
) -> dict:
    """Run the agents; the summed books (see the module docstring)."""
    parsed = urlparse(url)
    if parsed.hostname not in LOOPBACK:
        raise SystemExit(f"refusing to load {parsed.hostname}: loopback targets only")
    names = [f"{prefix}-{n:05d}" for n in range(machines)]
    processes = max(1, min(processes, connections))
    queue: multiprocessing.Queue = multiprocessing.Queue()
    workers = []
    for index in range(processes):
        options = {
            "host": parsed.hostname,
            "port": parsed.port,
            "token": token,
            "batch": batch,
            "seq": seq,
            "seconds": seconds,
            "names": names[index::processes],
            "rate": rate / processes,
            "connections": connections // processes + (1 if index < connections % processes else 0),
            "offset": index / processes,  # of one connection's spacing
        }
        worker = multiprocessing.Process(target=agent_process, args=(options, queue), daemon=True)
        worker.start()
        workers.append(worker)
    parts = [queue.get(timeout=seconds + 60) for _ in workers]
    for worker in workers:
        worker.join(10)
    return summarise(parts, seconds, machines, connections, batch, rate, seq)


def summarise(
    parts: list[dict], seconds: float, machines: int, connections: int, batch: int, rate: float, seq: bool
) -> dict:
    latencies = [value for part in parts for value in part["latencies_ms"]]
    by_status: dict[str, int] = {}
    for part in parts:
        for status, count in part["by_status"].items():
            by_status[str(status)] = by_status.get(str(status), 0) + count
    accepted = sum(part["reports_accepted"] for part in parts)
    return {
        "machines": machines,
        "connections": connections,
        "batch": batch,
        "seq": seq,
        "offered_reports_per_s": rate or None,
        "seconds": seconds,
        "requests": sum(part["requests"] for part in parts),
        "requests_per_s": round(sum(part["requests"] for part in parts) / seconds, 1),
        "reports_accepted": accepted,
        "accepted_reports_per_s": round(accepted / seconds, 1),
        "items_refused": sum(part["reports_refused"] for part in parts),
        "by_status": by_status,
        "reconnects": sum(part["reconnects"] for part in parts),
        "request_latency_ms": {
            "p50": percentile(latencies, 0.5),
            "p99": percentile(latencies, 0.99),
            "max": round(max(latencies), 2) if latencies else None,
        },
        "client_cpu_s": round(sum(part["cpu_s"] for part in parts), 2),
        "client_processes": len(parts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the web process, e.g. http://127.0.0.1:8000")
    parser.add_argument("--token", required=True)
    parser.add_argument("--machines", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1, help="machines per request (1: the single endpoint)")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument(
        "--rate", type=float, default=0, help="reports per second offered (0: as fast as answered)"
    )
    parser.add_argument("--seq", action="store_true", help="each report carries its machine's next seq")
    args = parser.parse_args()
    print(
        json.dumps(
            run(
                args.url,
                args.token,
                args.machines,
                args.seconds,
                args.connections,
                args.batch,
                args.processes,
                args.rate,
                args.seq,
            ),
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
