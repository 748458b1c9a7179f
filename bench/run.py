"""Scenario runner: starts the servers, drives them with bench/loadgen.py, records the cost.

    python bench/run.py standard            # what `make bench` runs
    python bench/run.py standard --quick    # a short pass of the same set
    python bench/run.py s1 --clients 5000 --seconds 60
    python bench/run.py failover            # the status stream while schedulers and workers die
    python bench/run.py busy-fleet          # the report API's ceiling, single and batched
    python bench/run.py reports --machines 2000 --batch 100 --clients 0 --seconds 30

Each result row (``bench/results/results.json``, rendered to ``results.md``) carries the
exact command, the versions and the machine, the client's books (deliveries, missed and
duplicated, latency) and the server's cost: CPU seconds and peak RSS per process, Redis
commands per second. Servers run as the Procfile runs them, against a private Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib.metadata import version
from pathlib import Path

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import loadgen, reportgen  # noqa: E402
from project import embedded_redis, heartbeats, keys, reportqueue  # noqa: E402
from scheduler.clock import NS_PER_S  # noqa: E402
from tests.faults import StreamWatch, leader, next_update_after, pid_of, wait_for_leader  # noqa: E402
from tests.stack import Stack, read_procfile  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# Streaming scenarios open their sockets at this rate, then measure: all at once, thousands
# of handshakes time out (each looks its session up in the database), which is the
# reconnect wave's question, not the stream's.
CONNECT_RATE = 200
FLEET_TOKEN = "bench-fleet-token"
# The web server under test: the Procfile's (uvicorn, two processes on one listening socket,
# one per core), or alternatives measured against it.
UVICORN = (
    "uvicorn project.asgi:application --host 127.0.0.1 --port ${PORT} --loop uvloop --http httptools "
    "--ws-max-size 1048576 --ws-per-message-deflate false --lifespan off --no-access-log"
)
WEB_SERVERS = {
    "procfile": None,
    "uvicorn-1": f"{UVICORN} --workers 1 --ws websockets-sansio",
    # uvicorn's older (deprecated) WebSocket implementation
    "uvicorn-2-legacy": f"{UVICORN} --workers 2 --ws websockets",
    # what the Procfile ran until the outgoing queues were bounded
    "daphne": "daphne --bind 127.0.0.1 --port ${PORT} --websocket_connect_timeout 30 project.asgi:application",
}
web_server = "procfile"
# Extra environment for every stack of this run (--env GROUP_LAYER=pubsub, ...), recorded per row.
stack_env: dict[str, str] = {}


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


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
    """CPU and peak RSS of named processes, and Redis commands, over a run.

    CPU and commands are reported for the steady window (from ``steady_after_s``, when every
    client has connected, to the end), so that a handshake storm does not count as fan-out
    cost; the whole run's figures are kept beside them.
    """

    def __init__(self, processes: dict[str, int], redis_url: str | None) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in processes.items()}
        self.redis = redis.Redis.from_url(redis_url) if redis_url else None
        self.peak_rss = dict.fromkeys(self.processes, 0)
        self.stop = threading.Event()
        self.steady: tuple[dict[str, float], int, float] | None = None

    @staticmethod
    def family(process: psutil.Process) -> list[psutil.Process]:
        """A process and its children (uvicorn's --workers serve from children)."""
        try:
            return [process, *process.children(recursive=True)]
        except psutil.Error:
            return [process]

    def cpu(self) -> dict[str, float]:
        out = {}
        for name, process in self.processes.items():
            out[name] = 0.0
            for member in self.family(process):
                try:
                    times = member.cpu_times()
                    out[name] += times.user + times.system
                except psutil.Error:
                    pass
        return out

    def commands(self) -> int:
        return int(self.redis.info("stats")["total_commands_processed"]) if self.redis else 0

    def reading(self) -> tuple[dict[str, float], int, float]:
        return self.cpu(), self.commands(), time.monotonic()

    def sample(self, steady_at: float) -> None:
        while not self.stop.wait(0.5):
            if self.steady is None and time.monotonic() >= steady_at:
                self.steady = self.reading()
            for name, process in self.processes.items():
                rss = 0
                for member in self.family(process):
                    with suppress(psutil.Error):
                        rss += member.memory_info().rss
                self.peak_rss[name] = max(self.peak_rss[name], rss)

    @staticmethod
    def rates(before: tuple, after: tuple) -> tuple[dict[str, float], float, float]:
        (cpu_before, commands_before, t_before), (cpu_after, commands_after, t_after) = before, after
        elapsed = max(t_after - t_before, 1e-9)
        cpu_pct = {name: round(100 * (cpu_after[name] - cpu_before[name]) / elapsed, 1) for name in cpu_after}
        return cpu_pct, round((commands_after - commands_before) / elapsed, 1), round(elapsed, 1)

    @contextmanager
    def measuring(self, steady_after_s: float = 0.0):
        first = self.reading()
        sampler = threading.Thread(target=self.sample, args=(first[2] + steady_after_s,), daemon=True)
        sampler.start()
        report: dict = {}
        yield report
        self.stop.set()
        sampler.join()
        last = self.reading()
        whole_cpu, whole_commands, whole_s = self.rates(first, last)
        steady_cpu, steady_commands, steady_s = self.rates(self.steady or first, last)
        report["server_cpu_pct"] = steady_cpu
        report["redis_commands_per_s"] = steady_commands
        report["steady_s"] = steady_s
        report["whole_run"] = {
            "server_cpu_pct": whole_cpu,
            "redis_commands_per_s": whole_commands,
            "elapsed_s": whole_s,
        }
        report["server_peak_rss_mib"] = {
            name: round(value / 2**20, 1) for name, value in self.peak_rss.items()
        }


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
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
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def our_stack(redis_url: str, instances: dict[str, int] | None = None, keep_logs: bool = False, **env: str):
    """The Procfile's processes (``instances`` of some, as :meth:`Stack.start_all` takes them)
    and a logged-in session; with ``keep_logs`` the work directory and its logs outlive the run."""
    stack = Stack(
        Path(tempfile.mkdtemp(prefix="bench-stack-")),
        redis_url,
        {
            "FLEET_TOKEN": FLEET_TOKEN,
            "LOG_LEVEL": "WARNING",
            "CHAT_RATE_LIMIT_COUNT": "100000",
            "CHAT_RATE_LIMIT_WINDOW_S": "1",
            # Every load client is the one user "bench": the per-user fair shares would refuse it.
            "SOCKETS_PER_USER_MAX": "1000000",
            "JOINS_PER_USER_PER_S": "1000000",
            "EDGE_MESSAGES_PER_S": "100000",
            "EDGE_MESSAGES_BURST": "100000",
            "EDGE_READS_PER_S": "100000",
            **stack_env,
            **env,
        },
    )
    if WEB_SERVERS[web_server]:
        stack.procfile["web"] = WEB_SERVERS[web_server]
    stack.start_all(instances)
    stack.create_users("bench")
    stack.session = stack.login("bench")
    try:
        yield stack
    finally:
        stack.stop_all()
        if keep_logs:
            print(f"the stack's logs are in {stack.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(stack.workdir, ignore_errors=True)


@contextmanager
def simulated_fleet(stack: Stack, machines: int):
    if not machines:
        yield None
        return
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "simulate_fleet",
            "--machines",
            str(machines),
            "--url",
            stack.base_url,
            "--token",
            FLEET_TOKEN,
            "--seed",
            "7",
        ],
        cwd=ROOT,
        env=stack.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
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
        params = {
            **params,
            "web": web_server,
            "web_command": WEB_SERVERS[web_server] or read_procfile()["web"],
            **({"env": stack_env} if stack_env else {}),
        }
    # The load average says whether anything else shared the machine during the run.
    return {
        "scenario": scenario,
        "params": params,
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "load_avg_1_5_15": [round(value, 2) for value in os.getloadavg()],
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "versions": versions(),
        "load": books,
        "cost": cost,
    }


def s0(clients: int, seconds: float, processes: int, pad_bytes: int = 0) -> dict:
    port = embedded_redis.free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "s0_server.py"),
            "--port",
            str(port),
            "--pad-bytes",
            str(pad_bytes),
        ]
    )
    time.sleep(1)
    try:
        monitor = Monitor({"s0": server.pid}, None)
        with monitor.measuring(loadgen.warmup_s(clients, CONNECT_RATE)) as cost:
            books = loadgen.run(
                "status", f"ws://127.0.0.1:{port}/", clients, seconds, processes, connect_rate=CONNECT_RATE
            )
    finally:
        server.terminate()
        server.wait(10)
    return row("S0 ceiling", {"clients": clients, "seconds": seconds, "pad_bytes": pad_bytes}, books, cost)


def s1(
    clients: int,
    seconds: float,
    processes: int,
    machines: int = 200,
    scenario: str = "S1 status",
    path: str = "/ws/status/",
) -> dict:
    with private_redis() as (redis_server, url), our_stack(url) as stack, simulated_fleet(stack, machines):
        monitor = Monitor(stack_processes(stack, redis_server), url)
        with (
            monitor.measuring(loadgen.warmup_s(clients, CONNECT_RATE)) as cost,
            profiling(
                stack,
                f"s1-{clients}-m{machines}-{web_server}",
                loadgen.warmup_s(clients, CONNECT_RATE),
                seconds,
            ),
        ):
            books = loadgen.run(
                "status",
                stack.ws_url + path,
                clients,
                seconds,
                processes,
                stack.session,
                connect_rate=CONNECT_RATE,
            )
    params = {"clients": clients, "seconds": seconds, "machines": machines}
    return row(scenario, {**params, **({"path": path} if path != "/ws/status/" else {})}, books, cost)


profile = False


@contextmanager
def profiling(stack: Stack, name: str, delay_s: float, duration_s: float):
    """With ``--profile``: py-spy samples the web processes in the steady window (collapsed stacks)."""
    if not profile:
        yield
        return
    out = RESULTS / f"profile-{name}.txt"
    py_spy = [
        str(Path(sys.executable).parent / "py-spy"),
        "record",
        "--pid",
        str(stack.processes["web"].pid),
        "--subprocesses",
        "--duration",
        str(int(duration_s)),
        "--rate",
        "50",
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
    ]
    spy = subprocess.Popen(
        ["sh", "-c", 'sleep "$0" && exec "$@"', str(delay_s), *py_spy],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.wait(duration_s + delay_s + 60)


def s2(members: int, senders: int, rate: float, seconds: float, processes: int) -> dict:
    with private_redis() as (redis_server, url), our_stack(url) as stack:
        monitor = Monitor(stack_processes(stack, redis_server), url)
        with monitor.measuring(loadgen.warmup_s(members, CONNECT_RATE)) as cost:
            books = loadgen.run(
                "chat",
                stack.ws_url + "/ws/chat/bench/",
                members,
                seconds,
                processes,
                stack.session,
                senders=senders,
                rate=rate,
                connect_rate=CONNECT_RATE,
            )
    return row(
        "S2 chat",
        {"members": members, "senders": senders, "room_msgs_per_s": senders * rate, "seconds": seconds},
        books,
        cost,
    )


def s3_original(clients: int, seconds: float, processes: int) -> dict:
    with private_redis() as (redis_server, url):
        port = embedded_redis.free_port()
        env = {
            **os.environ,
            "REDIS_URL": url,
            "DJANGO_SETTINGS_MODULE": "bench.original.settings",
            "DJANGO_DEBUG": "1",
            "LOG_LEVEL": "WARNING",
        }
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "daphne"),
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "bench.original.asgi:application",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(3)
        try:
            monitor = Monitor({"web": server.pid, "redis": redis_server.pid}, url)
            with monitor.measuring(loadgen.warmup_s(clients, CONNECT_RATE)) as cost:
                books = loadgen.run(
                    "original",
                    f"ws://127.0.0.1:{port}/ws/attime/",
                    clients,
                    seconds,
                    processes,
                    connect_rate=CONNECT_RATE,
                )
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
            books = loadgen.run(
                "status",
                stack.ws_url + "/ws/status/",
                clients,
                5,
                processes,
                stack.session,
                connect_rate=rate,
            )
    return row("reconnect wave", {"clients": clients, "connects_per_s": rate}, books, cost)


def web_rss(stack: Stack) -> int:
    """Resident bytes of the web server and its worker processes."""
    return sum(
        member.memory_info().rss for member in Monitor.family(psutil.Process(stack.processes["web"].pid))
    )


def idle_memory(clients: int, processes: int) -> dict:
    """Web RSS before and with ``clients`` idle status sockets open."""
    with private_redis() as (_, url), our_stack(url) as stack:
        before = web_rss(stack)
        result: dict = {}

        def measure_while_open() -> None:
            time.sleep(clients / 500 + 8)
            result["with_sockets"] = web_rss(stack)

        probe = threading.Thread(target=measure_while_open)
        probe.start()
        books = loadgen.run(
            "status",
            stack.ws_url + "/ws/status/",
            clients,
            clients / 500 + 12,
            processes,
            stack.session,
            connect_rate=500,
        )
        probe.join()
    per_thousand_mib = (result["with_sockets"] - before) / 2**20 / (books["connected"] / 1000)
    cost = {
        "web_rss_before_mib": round(before / 2**20, 1),
        "web_rss_with_sockets_mib": round(result["with_sockets"] / 2**20, 1),
        "rss_per_1000_sockets_mib": round(per_thousand_mib, 1),
    }
    return row("idle memory", {"clients": clients}, books, cost)


def stalled_client(seconds: float, **env: str) -> dict:
    """Web RSS while one client connects to /ws/status/ and never reads again.

    The server may drop it (uvicorn's keepalive ping goes unanswered); the row says when.
    """
    import socket

    with private_redis() as (_, url), our_stack(url, **env) as stack, simulated_fleet(stack, 200):
        raw = socket.create_connection(("127.0.0.1", stack.port))
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.sendall(
            (
                f"GET /ws/status/ HTTP/1.1\r\nHost: 127.0.0.1:{stack.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: {stack.base_url}\r\nCookie: sessionid={stack.session}\r\n\r\n"
            ).encode()
        )
        samples, dropped_after_s = [], None
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            samples.append(round(web_rss(stack) / 2**20, 1))
            if dropped_after_s is None and not server_holds(stack.port, raw.getsockname()[1]):
                dropped_after_s = round(time.monotonic() - started)
            time.sleep(5)
        raw.close()
    cost = {
        "web_rss_mib_every_5s": samples,
        "growth_mib": round(samples[-1] - samples[0], 1),
        "server_dropped_it_after_s": dropped_after_s,
    }
    return row("stalled client", {"seconds": seconds, "machines": 200, **env}, {}, cost)


def server_holds(server_port: int, client_port: int) -> bool:
    """Whether the server still has the connection from ``client_port`` open."""
    return any(
        c.laddr
        and c.laddr.port == server_port
        and c.raddr
        and c.raddr.port == client_port
        and c.status == psutil.CONN_ESTABLISHED
        for c in psutil.net_connections("tcp4")
    )


# --- failover: the status stream while schedulers and status workers die under it ------------

FAILOVER_INSTANCES = {"worker": 2, "scheduler": 2}
FAILOVER_MACHINES = 200
ALIVE_KEYS = {"scheduler": keys.SCHEDULER_INSTANCES, "worker": keys.STATUS_WORKER_INSTANCES}


@contextmanager
def dashboard(stack: Stack, path: str = "/ws/status/") -> Iterator[StreamWatch]:
    """One dashboard following the status stream at ``path`` (tests/faults.py) in a thread of
    its own while the block runs, so that a scenario can sleep, kill and restart in plain code."""
    watch, done = StreamWatch(), threading.Event()

    async def follow() -> None:
        async with stack.connect(path, stack.session) as ws:
            reading = asyncio.create_task(watch.follow(ws))
            await asyncio.to_thread(done.wait)
            reading.cancel()

    thread = threading.Thread(target=asyncio.run, args=(follow(),))
    thread.start()
    try:
        asyncio.run(next_update_after(watch, 0.0, timeout_s=15))  # past the snapshot
        yield watch
    finally:
        done.set()
        thread.join()


def latest_update(watch: StreamWatch) -> float:
    """When the dashboard's latest update arrived: a phase's books start there, so that the gap
    its first fault opens counts in full."""
    return watch.updates()[-1][0]


def dashboard_books(watch: StreamWatch, since: float) -> dict:
    """What the dashboard saw from the update at ``since``, named as other rows name it where it
    means the same; the rate leaves out that first update, which the phase did not produce.

    A second without an update is no hole in ``seq`` (the next update carries its changes), so
    it is counted apart: ``ticks_without_update``."""
    books = watch.books(since)
    del books["updates_per_s"]
    ticks_s = [frame["tick_ns"] // NS_PER_S for _, frame in watch.updates(since)]
    return {
        "connected": 1,
        "failed_handshakes": 0,
        "deliveries_per_s": round((books["updates"] - 1) / books["seconds"], 3),
        "missed": books.pop("missed_seq"),
        "duplicated": books.pop("repeated_seq"),
        "resyncs": books.pop("resyncs_sent"),
        **books,
        "ticks_without_update": sum(
            max(later - earlier - 1, 0) for earlier, later in itertools.pairwise(ticks_s)
        ),
    }


def wait_until_alive(client: redis.Redis, kind_key: str, pid: int, timeout_s: float = 30) -> None:
    """Until process ``pid`` counts among the live instances of its kind (a status worker does
    from its first message)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = client.zrangebyscore(kind_key, heartbeats.alive_since_ms(), "+inf")
        if any(pid_of(instance.decode()) == pid for instance in alive):
            return
        time.sleep(0.1)
    raise RuntimeError(f"process {pid} was not alive within {timeout_s} s of its start")


def kill_and_restart(stack: Stack, client: redis.Redis, watch: StreamWatch, name: str, label: str) -> dict:
    """SIGKILL ``label`` at a random point in the clock's second; once the dashboard has its next
    update (or has waited 10 s), start it again and wait until it is alive."""
    time.sleep((random.random() - time.time()) % 1)
    into_second_ms = round(time.time() % 1 * 1000)
    killed_at = time.monotonic()
    stack.kill(label)
    try:
        to_next_update_s = round(asyncio.run(next_update_after(watch, killed_at)), 3)
    except AssertionError:
        to_next_update_s = None
    wait_until_alive(client, ALIVE_KEYS[name], stack.start(name, label).pid)
    return {"killed": label, "into_second_ms": into_second_ms, "to_next_update_s": to_next_update_s}


def pause_leader(
    stack: Stack, client: redis.Redis, watch: StreamWatch, stopped_s: float, then_s: float
) -> dict:
    """SIGSTOP the leading scheduler past its lease, SIGCONT it, wait: who led when, and how long
    the dashboard waited for its next update."""
    paused = wait_for_leader(stack, client)
    log_before = len(stack.read_log(paused))
    stopped_at = time.monotonic()
    stack.send_signal(paused, signal.SIGSTOP)
    time.sleep(stopped_s)
    successor = leader(stack, client)
    stack.send_signal(paused, signal.SIGCONT)
    time.sleep(then_s)
    return {
        "paused": paused,
        "leader_while_paused": successor,
        "leader_after": leader(stack, client),
        "paused_one_stood_by": "standing by" in stack.read_log(paused)[log_before:],
        "to_next_update_s": round(asyncio.run(next_update_after(watch, stopped_at)), 3),
    }


def failover(quick: bool) -> Iterator[dict]:
    """One dashboard on a stack of two schedulers and two status workers (and a fleet reporting):
    steady, then the leading scheduler SIGKILLed (and restarted) again and again, then a status
    worker likewise, then the leader paused past its lease. One row per phase."""
    steady_s, kills = (10, 3) if quick else (60, 10)
    pause = {"stopped_s": 4, "then_s": 5}  # stopped well past the 1.5 s lease
    params = {"schedulers": 2, "status_workers": 2, "machines": FAILOVER_MACHINES}
    with (
        private_redis() as (redis_server, url),
        our_stack(url, FAILOVER_INSTANCES, keep_logs=True, LOG_LEVEL="INFO") as stack,
        simulated_fleet(stack, FAILOVER_MACHINES),
        redis.Redis.from_url(url) as client,
        dashboard(stack) as watch,
    ):
        since = latest_update(watch)
        with Monitor(stack_processes(stack, redis_server), url).measuring() as cost:
            time.sleep(steady_s)
        yield row("failover: steady", {**params, "seconds": steady_s}, dashboard_books(watch, since), cost)

        since = latest_update(watch)
        killed = [
            kill_and_restart(stack, client, watch, "scheduler", wait_for_leader(stack, client))
            for _ in range(kills)
        ]
        yield row(
            "failover: SIGKILL the leading scheduler",
            {**params, "kills": kills},
            {**dashboard_books(watch, since), "kills": killed},
            {},
        )

        since = latest_update(watch)
        killed = [
            kill_and_restart(stack, client, watch, "worker", ("worker", "worker.2")[n % 2])
            for n in range(kills)
        ]
        yield row(
            "failover: SIGKILL a status worker",
            {**params, "kills": kills},
            {**dashboard_books(watch, since), "kills": killed},
            {},
        )

        since = latest_update(watch)
        leaders = pause_leader(stack, client, watch, **pause)
        yield row(
            "failover: SIGSTOP the leader past its lease",
            {**params, **pause},
            {**dashboard_books(watch, since), **leaders},
            {},
        )


# --- busy fleet: the report API under agents, with dashboards watching ---------------------------

PROBE = "0-probe"  # sorts first by name: on every dashboard's first page
PROBE_EVERY_S = 0.5


def probe_reports(stack: Stack, stop: threading.Event, sent: dict[float, float]) -> None:
    """Report machine ``PROBE`` every ``PROBE_EVERY_S`` with a progress never used before, noting
    when each was sent: a dashboard's first update showing that progress says when it arrived."""
    for k in range(1, 10_000):
        if stop.wait(PROBE_EVERY_S):
            return
        progress = k / 100
        request = urllib.request.Request(
            f"{stack.base_url}/api/machines/{PROBE}/report",
            method="POST",
            data=json.dumps({"state": "provisioning", "progress": progress}).encode(),
            headers={"Authorization": f"Bearer {FLEET_TOKEN}", "Content-Type": "application/json"},
        )
        began = time.monotonic()
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except OSError:
            continue
        sent[progress] = began


def report_to_screen_ms(watch: StreamWatch, sent: dict[float, float]) -> dict:
    """Latency from each probe report's sending to the first update showing it. A probe report
    overtaken in the same tick by the next one is never shown: counted as coalesced."""
    shown: dict[float, float] = {}
    for at, frame in watch.updates():
        # The whole fleet's updates carry machines whole, a view's as rows ([name, state, progress, …]).
        changed = [(m["name"], m["progress"]) for m in frame.get("machines", [])]
        changed += [(row[0], row[2]) for row in frame.get("rows", [])]
        for name, progress in changed:
            if name == PROBE and progress in sent:
                shown.setdefault(progress, at)
    latencies = [(shown[progress] - began) * 1000 for progress, began in sent.items() if progress in shown]
    return {
        "p50": loadgen.percentile(latencies, 0.5),
        "p99": loadgen.percentile(latencies, 0.99),
        "max": round(max(latencies), 1) if latencies else None,
        "probes_sent": len(sent),
        "probes_shown": len(latencies),
    }


def busy_fleet_reports(
    machines: int,
    seconds: float,
    connections: int,
    batch: int,
    clients: int,
    processes: int,
    rate: float = 0,
    seq: bool = True,
    path: str = "/ws/status/",
) -> dict:
    """Agents post reports for ``machines`` machines over ``connections`` keep-alive connections
    (``batch`` machines per request; 1: the single endpoint), as fast as answered or at ``rate``,
    each report with its machine's next ``seq`` unless not ``seq``, for ``seconds``, while ``clients`` dashboards watch and one more follows a probe machine.
    Also: the stream's backlog when the agents stop and how long the status workers take to
    drain it (what ``202`` cost them), and the load tools' own CPU."""
    with (
        private_redis() as (redis_server, url),
        our_stack(url) as stack,
        redis.Redis.from_url(url) as client,
        dashboard(stack, path) as watch,  # the probe's machine sorts first: on page 1 of any view
    ):
        warm = loadgen.warmup_s(clients, CONNECT_RATE) if clients else 0
        monitor = Monitor(stack_processes(stack, redis_server), url)
        dashboards: dict = {}
        watching = (
            threading.Thread(
                target=lambda: dashboards.update(
                    loadgen.run(
                        "status",
                        stack.ws_url + path,
                        clients,
                        seconds,
                        processes,
                        stack.session,
                        connect_rate=CONNECT_RATE,
                    )
                )
            )
            if clients
            else None
        )
        stop, sent = threading.Event(), {}
        prober = threading.Thread(target=probe_reports, args=(stack, stop, sent))
        with (
            monitor.measuring(warm) as cost,
            profiling(stack, f"reports-m{machines}-b{batch}-d{clients}", warm, seconds),
        ):
            if watching:
                watching.start()
            time.sleep(warm)
            prober.start()
            agents = reportgen.run(
                stack.base_url, FLEET_TOKEN, machines, seconds, connections, batch, processes, rate, seq
            )
            backlog = reportqueue.waiting(client)
            stop.set()
            prober.join()
            if watching:
                watching.join()
        drained_at = time.monotonic()
        while reportqueue.waiting(client) and time.monotonic() - drained_at < 120:
            time.sleep(0.2)
        drain_s = round(time.monotonic() - drained_at, 1) if not reportqueue.waiting(client) else None
    books = {
        **{
            key: dashboards[key]
            for key in (
                "connected",
                "failed_handshakes",
                "deliveries_per_s",
                "mean_frame_bytes",
                "missed",
                "duplicated",
                "latency_ms",
                "worker_lag_ms",
            )
            if dashboards
        },
        "agents": agents,
        "accepted_reports_per_s": agents["accepted_reports_per_s"],
        "backlog_at_end": backlog,
        "backlog_drained_s": drain_s,
        "report_to_screen_ms": report_to_screen_ms(watch, sent),
        "client_cpu_s": round(agents["client_cpu_s"] + dashboards.get("client_cpu_s", 0), 2),
    }
    params = {
        "machines": machines,
        "connections": connections,
        "batch": batch,
        "seq": seq,
        "dashboards": clients,
        "dashboard_path": path,
        "seconds": seconds,
        "offered_reports_per_s": rate or "max",
    }
    return row("busy fleet: report API", params, books, cost)


PAGE_ONE = "/ws/status/?page=1"  # what the dashboard page shows first (docs/protocol.md, views)


def busy_fleet(quick: bool, processes: int) -> Iterator[dict]:
    """The report API's ceiling, single and batched, 2,000 machines over 64 connections, with
    one dashboard and with 2,000 on the dashboard page's first view (page 1)."""
    seconds = 10 if quick else 30
    for clients in (0, 2000):
        yield busy_fleet_reports(2000, seconds, 64, 1, clients, processes, path=PAGE_ONE)
        yield busy_fleet_reports(2000, seconds, 64, 100, clients, processes, path=PAGE_ONE)


S1_FRAME_BYTES = 45_000  # a typical S1 update with 200 machines changing (measured: 38-68 KB)


def standard(quick: bool, processes: int) -> Iterator[dict]:
    """The standard set, one row at a time (each is saved as soon as it is measured)."""
    seconds = 10 if quick else 60
    s3_seconds = 10 if quick else 30
    for clients in [1000] if quick else [1000, 2000, 5000, 10000]:
        yield s0(clients, seconds, processes)
        yield s0(clients, seconds, processes, pad_bytes=S1_FRAME_BYTES)
        yield s1(clients, seconds, processes, machines=0, scenario="S1 status, idle fleet")
        yield s1(clients, seconds, processes)
    yield s2(500, 10, 1, seconds, processes)
    yield s2(1000, 20, 1, seconds, processes)
    for clients in (100, 200):
        yield s3_original(clients, s3_seconds, processes)
        # Both sides serve every client a fresh status each second; ours with no fleet
        # reporting, so that only the fan-out is compared.
        yield s1(clients, s3_seconds, processes, machines=0, scenario="S3 ours: /ws/status/")
    for rate in [200, 500] if quick else [200, 500, 1000, 2000]:
        yield reconnect_wave(1000, rate, processes)
    yield idle_memory(1000, processes)
    yield stalled_client(20 if quick else 60)
    # With the keepalive out of the way, what bounds it is the socket's outbox.
    yield stalled_client(30 if quick else 120, UVICORN_WS_PING_INTERVAL="600")
    yield from failover(quick)


def save(rows: list[dict]) -> None:
    """Appends ``rows`` to results.json and re-renders results.md from all of it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "results.json"
    history = json.loads(path.read_text()) if path.exists() else []
    history.extend(rows)
    path.write_text(json.dumps(history, indent=1) + "\n")
    (RESULTS / "results.md").write_text(render(history))


def web_us_per_delivery(r: dict) -> float | str:
    """CPU microseconds the socket-serving process spent per frame delivered (steady window)."""
    if r["scenario"].startswith("failover"):
        return ""  # one dashboard: the web's CPU goes to the fleet's reports, not to deliveries
    cpu_pct = r["cost"].get("server_cpu_pct", {})
    web_pct = cpu_pct.get("web", cpu_pct.get("s0"))
    rate = r["load"].get("deliveries_per_s")
    return round(web_pct / 100 / rate * 1e6) if web_pct is not None and rate else ""


def per_process(values: dict, unit: str) -> str:
    return ", ".join(f"{name} {value:g}{unit}" for name, value in values.items())


def failover_note(load: dict) -> str:
    """A failover row's own books: the stream's continuity, each kill's wait, who led."""
    parts = [
        f"epochs {len(load['epochs'])}",
        f"ticks out of order {load['ticks_out_of_order']}",
        f"resyncs {load['resyncs']}",
        f"worst gap {load['worst_gap_s']} s",
        f"seconds without an update {load['ticks_without_update']}",
    ]
    if "kills" in load:
        waits = ", ".join(str(kill["to_next_update_s"]) for kill in load["kills"])
        parts.append(f"kill to next update s: {waits}")
    if "paused" in load:
        parts.append(
            f"stop to next update {load['to_next_update_s']} s; paused {load['paused']}, led while paused "
            f"by {load['leader_while_paused']}, then by {load['leader_after']}; "
            f"paused one stood by: {load['paused_one_stood_by']}"
        )
    return "; ".join(parts)


def busy_fleet_note(load: dict) -> str:
    agents, screen = load["agents"], load["report_to_screen_ms"]
    return (
        f"reports accepted {load['accepted_reports_per_s']}/s in {agents['requests_per_s']} requests/s "
        f"(p50/p99 {agents['request_latency_ms']['p50']}/{agents['request_latency_ms']['p99']} ms, "
        f"answers {agents['by_status']}); backlog at the end {load['backlog_at_end']}, drained in "
        f"{load['backlog_drained_s']} s; report to screen p50/p99 {screen['p50']}/{screen['p99']} ms "
        f"({screen['probes_shown']} of {screen['probes_sent']} probes shown); agents' CPU {agents['client_cpu_s']} s"
    )


def render(rows: list[dict]) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Appended by `bench/run.py` (each row in results.json has the exact command, versions and machine);",
        "newest last. Server CPU is % of one core per process and Redis cmd/s over the steady window (all clients connected); client CPU is seconds, all",
        "load-generator processes together. Latency is from the server's event time (`tick_ns`, `sent_ns`,",
        "`ts`) to receipt by the client. Load average is the machine's at the end of the row.",
        "",
        "| when | scenario | params | connected / failed | deliveries/s | frame B | missed | dup | p50 ms | p99 ms | max ms "
        "| server CPU | web µs/delivery | client CPU s | peak RSS MiB | Redis cmd/s | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        load, cost = r["load"], r["cost"]
        latency = load.get("latency_ms", {})
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        notes = []
        if "delivered_pct" in load:
            notes.append(f"{load['delivered_pct']} % of expected")
        if "lost" in load:
            notes.append(f"lost {load['lost']}")
        if "rss_per_1000_sockets_mib" in cost:
            notes.append(f"RSS/1000 sockets {cost['rss_per_1000_sockets_mib']} MiB")
        if (load.get("worker_lag_ms") or {}).get("p99") is not None:
            notes.append(
                f"worker lag p50/p99 {load['worker_lag_ms']['p50']}/{load['worker_lag_ms']['p99']} ms"
            )
        if load.get("server_resyncs"):
            notes.append(
                f"{load['server_resyncs']} server resyncs of slow clients, {load['dropped']} frames dropped"
            )
        if "growth_mib" in cost:
            notes.append(f"web RSS growth {cost['growth_mib']} MiB: {cost['web_rss_mib_every_5s']}")
        if cost.get("server_dropped_it_after_s") is not None:
            notes.append(f"the server dropped it after ~{cost['server_dropped_it_after_s']} s")
        if "worst_gap_s" in load:
            notes.append(failover_note(load))
        if "accepted_reports_per_s" in load:
            notes.append(busy_fleet_note(load))
        extra = f" ({'; '.join(notes)})" if notes else ""
        lines.append(
            f"| {r['when']} | {r['scenario']}{extra} | {params} | {load.get('connected', '')} / {load.get('failed_handshakes', '')} "
            f"| {load.get('deliveries_per_s', '')} | {load.get('mean_frame_bytes', '')} | {load.get('missed', '')} "
            f"| {load.get('duplicated', '')} | {latency.get('p50', '')} | {latency.get('p99', '')} | {latency.get('max', '')} "
            f"| {per_process(cost.get('server_cpu_pct', {}), ' %')} | {web_us_per_delivery(r)} | {load.get('client_cpu_s', '')} "
            f"| {per_process(cost.get('server_peak_rss_mib', {}), '')} | {cost.get('redis_commands_per_s', '')} "
            f"| {r.get('load_avg_1_5_15', [''])[0]} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "scenario",
        choices=[
            "standard",
            "s0",
            "s1",
            "s2",
            "s3",
            "wave",
            "memory",
            "stalled",
            "failover",
            "busy-fleet",
            "reports",
        ],
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--rate", type=float, default=1)
    parser.add_argument("--connect-rate", type=float, default=200)
    parser.add_argument("--machines", type=int, default=200, help="S1, reports: simulated machines reporting")
    parser.add_argument(
        "--path",
        default="/ws/status/",
        help="S1, reports: the status sockets' path, e.g. '/ws/status/?page=1' (a view; docs/protocol.md)",
    )
    parser.add_argument(
        "--connections", type=int, default=64, help="reports: the agents' keep-alive connections"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="reports: machines per request (1: the single endpoint; more: POST /api/reports)",
    )
    parser.add_argument(
        "--report-rate",
        type=float,
        default=0,
        help="reports: reports per second offered (0: as fast as they are answered)",
    )
    parser.add_argument(
        "--no-seq",
        action="store_true",
        help="reports: without seq (for a tree from before reports could carry one)",
    )
    parser.add_argument("--profile", action="store_true", help="S1, reports: py-spy the web processes")
    parser.add_argument(
        "--pad-bytes", type=int, default=0, help="S0: padding per update, to match S1's frame size"
    )
    parser.add_argument(
        "--web", choices=sorted(WEB_SERVERS), default="procfile", help="web server under test"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the stack's processes, e.g. GROUP_LAYER=pubsub",
    )
    args = parser.parse_args()
    global web_server, profile
    web_server, profile = args.web, args.profile
    stack_env.update(assignment.split("=", 1) for assignment in args.env)
    raise_fd_limit()
    runners = {
        "standard": lambda: standard(args.quick, args.processes),
        "s0": lambda: [s0(args.clients, args.seconds, args.processes, args.pad_bytes)],
        "s1": lambda: [s1(args.clients, args.seconds, args.processes, args.machines, path=args.path)],
        "s2": lambda: [s2(args.clients, args.senders, args.rate, args.seconds, args.processes)],
        "s3": lambda: [
            s3_original(args.clients, args.seconds, args.processes),
            s1(args.clients, args.seconds, args.processes, machines=0, scenario="S3 ours: /ws/status/"),
        ],
        "wave": lambda: [reconnect_wave(args.clients, args.connect_rate, args.processes)],
        "memory": lambda: [idle_memory(args.clients, args.processes)],
        "stalled": lambda: [stalled_client(args.seconds)],
        "failover": lambda: failover(args.quick),
        "busy-fleet": lambda: busy_fleet(args.quick, args.processes),
        "reports": lambda: [
            busy_fleet_reports(
                args.machines,
                args.seconds,
                args.connections,
                args.batch,
                args.clients,
                args.processes,
                args.report_rate,
                not args.no_seq,
                args.path,
            )
        ],
    }
    rows = []
    for result in runners[args.scenario]():
        save([result])
        rows.append(result)
    print(render(rows))


if __name__ == "__main__":
    main()
