"""The scheduler process: ``run()`` -> ``serve()`` -> ``main_loop()``, with a clean shutdown.

SIGTERM or SIGINT sets a flag; the loop finishes the tick it is on and exits 0.
Each job runs on the boundaries of its own period, all driven by one wall clock.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import time
from typing import Any

import redis.asyncio as redis
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings

from project import heartbeats

from .clock import NS_PER_S, Tick, due_tick, next_boundary_ns
from .jobs import Job, default_jobs

log = logging.getLogger("scheduler")


class Scheduler:
    def __init__(self, jobs: list[Job], redis_url: str, period_ns: int = NS_PER_S) -> None:
        self.jobs = jobs
        self.redis_url = redis_url
        self.period_ns = period_ns
        self.should_exit = asyncio.Event()
        # Names this run of the clock; the status feed restarts its sequence when it changes.
        self.epoch = secrets.token_hex(4)

    @classmethod
    def from_settings(cls) -> "Scheduler":
        return cls(default_jobs(), settings.REDIS_URL)

    def run(self) -> None:
        asyncio.run(self.serve())

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.handle_exit, signum)
        self.redis = redis.from_url(self.redis_url)
        self.channel_layer = get_channel_layer()
        log.info("scheduler %s started with jobs: %s", self.epoch, ", ".join(job.name for job in self.jobs))
        try:
            await self.main_loop()
        finally:
            await self.redis.aclose()
            log.info("scheduler stopped")

    def handle_exit(self, signum: int) -> None:
        log.info("received %s, stopping after the current tick", signal.Signals(signum).name)
        self.should_exit.set()

    async def main_loop(self) -> None:
        expected_ns = next_boundary_ns(time.time_ns(), self.period_ns)
        while not self.should_exit.is_set():
            tick = await self.wait_for(expected_ns)
            if tick is None:
                return
            if tick.skipped:
                log.warning("scheduler was late; skipped %d tick(s)", tick.skipped)
            await self.on_tick(tick)
            expected_ns = tick.tick_ns + self.period_ns

    async def wait_for(self, expected_ns: int) -> Tick | None:
        """Sleep until the boundary ``expected_ns`` (or a shutdown); the tick that is due."""
        while True:
            now_ns = time.time_ns()
            tick = due_tick(now_ns, expected_ns, self.period_ns)
            if tick is not None:
                return tick
            try:
                await asyncio.wait_for(self.should_exit.wait(), (expected_ns - now_ns) / NS_PER_S)
                return None
            except TimeoutError:
                continue

    async def on_tick(self, tick: Tick) -> None:
        for job in self.jobs:
            if (tick.tick_ns // NS_PER_S) % job.every_s:
                continue
            try:
                await job.run(self, tick)
            except Exception:
                # One failing job (Redis briefly away, say) must not stop the clock.
                log.exception("scheduler job %s failed", job.name)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        try:
            await self.channel_layer.send(channel, message)
        except ChannelFull:
            # The worker is down or far behind; it drops stale ticks anyway.
            log.warning("channel %s is full; %s not sent", channel, message["type"])

    async def beat(self, **fields: Any) -> None:
        await self.redis.set(heartbeats.key(heartbeats.SCHEDULER), heartbeats.record(**fields), ex=heartbeats.TTL_S)
