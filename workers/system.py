"""The ``system`` panel: the service's own health, sampled once per tick by the status worker."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from project import heartbeats, metrics, redis_connections

from .metrics import handled

log = logging.getLogger(__name__)


class SystemProbe:
    def __init__(self) -> None:
        self.redis = redis_connections.sync_client(socket_timeout=0.5, socket_connect_timeout=0.5)

    @staticmethod
    def unknown() -> dict[str, Any]:
        """The panel before the first sample: every reading unknown."""
        return {
            "connections": None,
            "web_processes": None,
            "worker": {"alive": True, "messages_per_s": None, "status_instances": None},
            "scheduler": {"tick_lag_ms": None, "leader": None, "instances": None},
            "redis": {"rtt_ms": None},
        }

    def sample(self, tick_lag_ms: float | None) -> dict[str, Any]:
        system = self.unknown()
        system["worker"]["messages_per_s"] = handled.rate_per_s()
        system["scheduler"]["tick_lag_ms"] = tick_lag_ms
        try:
            started = time.perf_counter()
            self.redis.ping()
            system["redis"]["rtt_ms"] = round((time.perf_counter() - started) * 1000, 3)
            metrics.redis_rtt_seconds.observe(system["redis"]["rtt_ms"] / 1000)
            keys = list(self.redis.scan_iter(match=heartbeats.WEB_CONNECTIONS_PREFIX + "*", count=100))
            counts = [int(value) for value in self.redis.mget(keys) if value is not None] if keys else []
            system["connections"] = sum(counts)
            system["web_processes"] = len(counts)
            with self.redis.pipeline(transaction=False) as pipe:
                heartbeats.queue_topology(pipe)
                pipe.set(heartbeats.key(heartbeats.WORKER), heartbeats.record(), ex=heartbeats.TTL_S)
                topology = heartbeats.topology(pipe.execute()[:-1])
            system["scheduler"]["leader"] = topology["leader"]
            system["scheduler"]["instances"] = topology["schedulers"]
            system["worker"]["status_instances"] = topology["status_workers"]
        except redis.RedisError as error:
            log.warning("system probe could not reach Redis: %s", error)
        return system
