"""Redis servers a test owns and may kill: one server, or a master, replicas and Sentinels."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from project import embedded_redis

MASTER_NAME = "fleetchat"


class OwnRedis:
    """A private redis-server on a fixed port that the test can kill and start again, empty."""

    def __init__(self, workdir: Path, extra_args: list[str] | None = None) -> None:
        self.workdir = workdir
        self.extra_args = extra_args or []
        self.port = embedded_redis.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None
        self.start()

    def start(self) -> None:
        self.process, _ = embedded_redis.start(self.workdir, port=self.port, extra_args=self.extra_args)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class SentinelSet:
    """A master, two replicas and three Sentinels (quorum 2) on loopback."""

    def __init__(self, workdir: Path, down_after_ms: int = 1000) -> None:
        self.master = OwnRedis(workdir / "master")
        self.replicas = [
            OwnRedis(workdir / f"replica-{n}", ["--replicaof", "127.0.0.1", str(self.master.port)])
            for n in (1, 2)
        ]
        self.sentinels = [
            embedded_redis.start_sentinel(
                workdir / f"sentinel-{n}", MASTER_NAME, self.master.port, 2, down_after_ms
            )
            for n in (1, 2, 3)
        ]
        self.wait_until_watched()

    @property
    def addresses(self) -> str:
        """``REDIS_SENTINELS`` for this set."""
        return ",".join(f"127.0.0.1:{port}" for _, port in self.sentinels)

    def master_port(self) -> int:
        with redis.Redis(port=self.sentinels[0][1], socket_timeout=1) as sentinel:
            return int(sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)[1])

    def wait_until_watched(self, timeout_s: float = 20) -> None:
        """Until every Sentinel knows both replicas and the other Sentinels (a failover needs them)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready = True
            for _, port in self.sentinels:
                with redis.Redis(port=port, socket_timeout=1) as sentinel:
                    master = sentinel.sentinel_master(MASTER_NAME)
                    ready &= master["num-slaves"] == 2 and master["num-other-sentinels"] == 2
            if ready:
                return
            time.sleep(0.2)
        raise AssertionError("the Sentinels did not discover the replicas and each other")

    def wait_for_new_master(self, old_port: int, timeout_s: float = 30) -> float:
        """Seconds until the Sentinels name a master other than ``old_port``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.master_port() != old_port:
                return time.monotonic() - started
            time.sleep(0.1)
        raise AssertionError("no replica was promoted")

    def stop(self) -> None:
        for process, _ in self.sentinels:
            process.terminate()
            process.wait(timeout=10)
        for server in (self.master, *self.replicas):
            server.stop()
