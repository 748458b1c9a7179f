"""Scenario runner: starts the servers, drives them with bench/loadgen.py, records the cost.

    python bench/run.py standard            # what `make bench` runs
    python bench/run.py standard --quick    # a short pass of the same set
    python bench/run.py s1 --clients 5000 --seconds 60

Each result row (``bench/results/results.json``, rendered to ``results.md``) carries the
exact command, the versions and the machine, the client's books (deliveries, missed and
duplicated, latency) and the server's cost: CPU seconds and peak RSS per process, Redis
commands per second. Servers run as the Procfile runs them, against a private Redis.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import loadgen  # noqa: E402
from project import embedded_redis  # noqa: E402
from tests.stack import Stack  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FLEET_TOKEN = "bench-fleet-token"
# The web server under test: the Procfile's daphne, or alternatives measured against it.
WEB_SERVERS = {
    "daphne": None,
    "uvicorn": "uvicorn project.asgi:application --host 127.0.0.1 --port ${PORT} --loop uvloop "
               "--http httptools --ws websockets --no-access-log --log-level warning",
}
web_server = "daphne"


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version()}


def versions() -> dict:
    names = ("django", "channels", "channels-redis", "daphne", "uvicorn", "redis", "websockets")
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except Exception:
            out[name] = None
    return out


class Monitor:
    """CPU seconds and peak RSS of named processes, and Redis commands, over a run."""

    def __init__(self, processes: dict[str, int], redis_url: str | None) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in processes.items()}
        self.redis = redis.Redis.from_url(redis_url) if redis_url else None
        self.peak_rss = dict.fromkeys(self.processes, 0)
        self.stop = threading.Event()

    def cpu(self) -> dict[str, float]:
        out = {}
        for name, process in self.processes.items():
            try:
                times = process.cpu_times()
                out[name] = times.user + times.system
            except psutil.Error:
                out[name] = 0.0
        return out

    def commands(self) -> int:
        return int(self.redis.info("stats")["total_commands_processed"]) if self.redis else 0

    def sample(self) -> None:
        while not self.stop.wait(0.5):
            for name, process in self.processes.items():
                try:
                    self.peak_rss[name] = max(self.peak_rss[name], process.memory_info().rss)
                except psutil.Error:
                    pass

    @contextmanager
    def measuring(self):
        cpu_before, commands_before, started = self.cpu(), self.commands(), time.monotonic()
        sampler = threading.Thread(target=self.sample, daemon=True)
        sampler.start()
        report: dict = {}
        yield report
        self.stop.set()
        sampler.join()
        elapsed = time.monotonic() - started
        cpu_after = self.cpu()
        report["server_cpu_s"] = {name: round(cpu_after[name] - cpu_before[name], 2) for name in cpu_after}
        report["server_cpu_pct"] = {name: round(100 * value / elapsed, 1) for name, value in report["server_cpu_s"].items()}
        report["server_peak_rss_mib"] = {name: round(value / 2**20, 1) for name, value in self.peak_rss.items()}
        report["redis_commands_per_s"] = round((self.commands() - commands_before) / elapsed, 1)
        report["elapsed_s"] = round(elapsed, 1)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextmanager
def private_redis():
    workdir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    server, url = embedded_redis.start(workdir)
    try:
        yield server, url
    finally:
        server.terminate()
        server.wait(10)


@contextmanager
def our_stack(redis_url: str, **env: str):
    stack = Stack(Path(tempfile.mkdtemp(prefix="bench-stack-")), redis_url, {
        "FLEET_TOKEN": FLEET_TOKEN, "LOG_LEVEL": "WARNING",
        "CHAT_RATE_LIMIT_COUNT": "100000", "CHAT_RATE_LIMIT_WINDOW_S": "1", **env,
    })
    if WEB_SERVERS[web_server]:
        stack.procfile["web"] = WEB_SERVERS[web_server]
    stack.start_all()
    stack.create_users("bench")
    stack.session = stack.login("bench")
    try:
        yield stack
    finally:
        stack.stop_all()


@contextmanager
def simulated_fleet(stack: Stack, machines: int):
    process = subprocess.Popen(
        [sys.executable, "manage.py", "simulate_fleet", "--machines", str(machines), "--url", stack.base_url,
         "--token", FLEET_TOKEN, "--seed", "7"], cwd=ROOT, env=stack.env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(3)
    try:
        yield process
    finally:
        process.terminate()
        process.wait(10)


def stack_processes(stack: Stack, redis_server) -> dict[str, int]:
    return {**{name: process.pid for name, process in stack.processes.items()}, "redis": redis_server.pid}


def row(scenario: str, params: dict, books: dict, cost: dict) -> dict:
    if not scenario.startswith(("S0", "S3 original")):
        params = {**params, "web": web_server}
    return {"scenario": scenario, "params": params, "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
            "versions": versions(), "load": books, "cost": cost}


def s0(clients: int, seconds: float, processes: int) -> dict:
    port = embedded_redis.free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "bench" / "s0_server.py"), "--port", str(port)])
    time.sleep(1)
    try:
        monitor = Monitor({"s0": server.pid}, None)
        with monitor.measuring() as cost:
            books = loadgen.run("status", f"ws://127.0.0.1:{port}/", clients, seconds, processes)
    finally:
        server.terminate()
        server.wait(10)
    return row("S0 ceiling", {"clients": clients, "seconds": seconds}, books, cost)


def s1(clients: int, seconds: float, processes: int, machines: int = 200) -> dict:
    with private_redis() as (redis_server, url), our_stack(url) as stack, simulated_fleet(stack, machines):
        monitor = Monitor(stack_processes(stack, redis_server), url)
        with monitor.measuring() as cost:
            books = loadgen.run("status", stack.ws_url + "/ws/status/", clients, seconds, processes, stack.session)
    return row("S1 status", {"clients": clients, "seconds": seconds, "machines": machines}, books, cost)


def s2(members: int, senders: int, rate: float, seconds: float, processes: int) -> dict:
    with private_redis() as (redis_server, url), our_stack(url) as stack:
        monitor = Monitor(stack_processes(stack, redis_server), url)
        with monitor.measuring() as cost:
            books = loadgen.run("chat", stack.ws_url + "/ws/chat/bench/", members, seconds, processes, stack.session,
                                senders=senders, rate=rate)
    return row("S2 chat", {"members": members, "senders": senders, "room_msgs_per_s": senders * rate,
                           "seconds": seconds}, books, cost)


def s3_original(clients: int, seconds: float, processes: int) -> dict:
    with private_redis() as (redis_server, url):
        port = embedded_redis.free_port()
        env = {**os.environ, "REDIS_URL": url, "DJANGO_SETTINGS_MODULE": "bench.original.settings",
               "DJANGO_DEBUG": "1", "LOG_LEVEL": "WARNING"}
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "daphne"), "--bind", "127.0.0.1", "--port", str(port),
             "bench.original.asgi:application"], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)
        try:
            monitor = Monitor({"web": server.pid, "redis": redis_server.pid}, url)
            with monitor.measuring() as cost:
                books = loadgen.run("original", f"ws://127.0.0.1:{port}/ws/attime/", clients, seconds, processes)
        finally:
            server.terminate()
            server.wait(10)
    books["expected_frames"] = clients * clients * seconds
    books["delivered_pct"] = round(100 * books["frames"] / books["expected_frames"], 1)
    return row("S3 original design", {"clients": clients, "seconds": seconds}, books, cost)


def reconnect_wave(clients: int, rate: float, processes: int) -> dict:
    with private_redis() as (redis_server, url), our_stack(url) as stack:
        monitor = Monitor(stack_processes(stack, redis_server), url)
        with monitor.measuring() as cost:
            books = loadgen.run("status", stack.ws_url + "/ws/status/", clients, clients / rate + 3, processes,
                                stack.session, connect_rate=rate)
    return row("reconnect wave", {"clients": clients, "connects_per_s": rate}, books, cost)


def idle_memory(clients: int, processes: int) -> dict:
    """Web RSS before and with ``clients`` idle status sockets open."""
    with private_redis() as (redis_server, url), our_stack(url) as stack:
        web = psutil.Process(stack.processes["web"].pid)
        before = web.memory_info().rss
        result: dict = {}

        def measure_while_open() -> None:
            time.sleep(clients / 500 + 8)
            result["with_sockets"] = web.memory_info().rss

        probe = threading.Thread(target=measure_while_open)
        probe.start()
        books = loadgen.run("status", stack.ws_url + "/ws/status/", clients, clients / 500 + 12, processes,
                            stack.session, connect_rate=500)
        probe.join()
    per_thousand_mib = (result["with_sockets"] - before) / 2**20 / (books["connected"] / 1000)
    cost = {"web_rss_before_mib": round(before / 2**20, 1), "web_rss_with_sockets_mib": round(result["with_sockets"] / 2**20, 1),
            "rss_per_1000_sockets_mib": round(per_thousand_mib, 1)}
    return row("idle memory", {"clients": clients}, books, cost)


def stalled_client(seconds: float) -> dict:
    """Web RSS while one client connects to /ws/status/ and never reads again."""
    import socket

    with private_redis() as (redis_server, url), our_stack(url) as stack, simulated_fleet(stack, 200):
        web = psutil.Process(stack.processes["web"].pid)
        raw = socket.create_connection(("127.0.0.1", stack.port))
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.sendall((
            f"GET /ws/status/ HTTP/1.1\r\nHost: 127.0.0.1:{stack.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {stack.base_url}\r\nCookie: sessionid={stack.session}\r\n\r\n").encode())
        samples = []
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            samples.append(round(web.memory_info().rss / 2**20, 1))
            time.sleep(5)
        raw.close()
    cost = {"web_rss_mib_every_5s": samples, "growth_mib": round(samples[-1] - samples[0], 1)}
    return row("stalled client", {"seconds": seconds, "machines": 200}, {}, cost)


def standard(quick: bool, processes: int) -> list[dict]:
    seconds = 10 if quick else 60
    sizes = [1000, 2000] if quick else [1000, 2000, 5000, 10000]
    rows = []
    for clients in sizes:
        rows.append(s0(clients, seconds, processes))
        rows.append(s1(clients, seconds, processes))
    rows.append(s2(500, 10, 1, seconds, processes))
    rows.append(s2(1000, 20, 1, seconds, processes))
    for clients in (100, 200):
        rows.append(s3_original(clients, 30 if not quick else 10, processes))
        rows.append(s1(clients, 30 if not quick else 10, processes))
    rows.append(reconnect_wave(1000, 200, processes))
    for rate in ([500] if quick else [500, 1000, 2000]):
        rows.append(reconnect_wave(1000, rate, processes))
    rows.append(idle_memory(1000, processes))
    rows.append(stalled_client(20 if quick else 60))
    return rows


def save(rows: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "results.json"
    history = json.loads(path.read_text()) if path.exists() else []
    history.extend(rows)
    path.write_text(json.dumps(history, indent=1) + "\n")
    (RESULTS / "results.md").write_text(render(history))


def render(rows: list[dict]) -> str:
    lines = [
        "# Benchmark results", "",
        "Appended by `bench/run.py`; newest last. CPU is seconds over the run per process; latency is from the",
        "server's event time (`tick_ns`, `sent_ns`, `ts`) to receipt by the client.", "",
        "| when | scenario | params | connected / failed | deliveries/s | missed | dup | p50 ms | p99 ms | max ms | server CPU s | client CPU s | peak RSS MiB | Redis cmd/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        load, cost = r["load"], r["cost"]
        latency = load.get("latency_ms", {})
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        extra = ""
        if "delivered_pct" in load:
            extra = f" ({load['delivered_pct']} % of expected)"
        if "lost" in load:
            extra = f" (lost {load['lost']})"
        if "rss_per_1000_sockets_mib" in cost:
            extra = f" (RSS/1000 sockets {cost['rss_per_1000_sockets_mib']} MiB)"
        if "growth_mib" in cost:
            extra = f" (web RSS growth {cost['growth_mib']} MiB: {cost['web_rss_mib_every_5s']})"
        lines.append(
            f"| {r['when']} | {r['scenario']}{extra} | {params} | {load.get('connected', '')} / {load.get('failed_handshakes', '')} "
            f"| {load.get('deliveries_per_s', '')} | {load.get('missed', '')} | {load.get('duplicated', '')} "
            f"| {latency.get('p50', '')} | {latency.get('p99', '')} | {latency.get('max', '')} "
            f"| {cost.get('server_cpu_s', '')} | {load.get('client_cpu_s', '')} | {cost.get('server_peak_rss_mib', '')} "
            f"| {cost.get('redis_commands_per_s', '')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["standard", "s0", "s1", "s2", "s3", "wave", "memory", "stalled"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--rate", type=float, default=1)
    parser.add_argument("--connect-rate", type=float, default=200)
    parser.add_argument("--web", choices=sorted(WEB_SERVERS), default="daphne", help="web server under test")
    args = parser.parse_args()
    global web_server
    web_server = args.web
    raise_fd_limit()
    runners = {
        "standard": lambda: standard(args.quick, args.processes),
        "s0": lambda: [s0(args.clients, args.seconds, args.processes)],
        "s1": lambda: [s1(args.clients, args.seconds, args.processes)],
        "s2": lambda: [s2(args.clients, args.senders, args.rate, args.seconds, args.processes)],
        "s3": lambda: [s3_original(args.clients, args.seconds, args.processes), s1(args.clients, args.seconds, args.processes)],
        "wave": lambda: [reconnect_wave(args.clients, args.connect_rate, args.processes)],
        "memory": lambda: [idle_memory(args.clients, args.processes)],
        "stalled": lambda: [stalled_client(args.seconds)],
    }
    rows = runners[args.scenario]()
    save(rows)
    print(render(rows))


if __name__ == "__main__":
    main()
