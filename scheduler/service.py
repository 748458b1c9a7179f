"""The scheduler process: ``run()`` -> ``serve()`` -> ``main_loop()``, with a clean shutdown.

Any number may run: each keeps time, but only the holder of the lease (``scheduler/lease.py``)
runs the jobs, and every tick carries its fencing token. The others stand by, polling for
the lease; the first to take it after the leader dies sends the tick the dead leader missed,
if it is still fresh, so that failover costs a pause of about the lease's TTL.

SIGTERM or SIGINT sets a flag; the loop finishes the tick it is on, hands the lease back
(so a standby takes over at once, not after the TTL) and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

import redis.asyncio as redis
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings

from project import heartbeats, keys, metrics, redis_connections

from .clock import NS_PER_S, Tick, due_tick, next_boundary_ns
from .jobs import Job, default_jobs
from .lease import Lease

log = logging.getLogger("scheduler")

# A new leader still sends the boundary its predecessor missed if it is at most this late:
# the status worker drops ticks over 1 s late, and this leaves the tick time to get there.
CATCH_UP_NS = 800_000_000
STANDBY_POLL_S = 0.1
ALIVE_EVERY_S = 1.0


class Scheduler:
    def __init__(self, jobs: list[Job], lease_ttl_ms: int, period_ns: int = NS_PER_S) -> None:
        self.jobs = jobs
        self.lease_ttl_ms = lease_ttl_ms
        # Renew six times per TTL: a leader must miss five renewals in a row to lose it.
        self.renew_every_s = lease_ttl_ms / 6000
        self.period_ns = period_ns
        self.instance = heartbeats.instance_id()
        self.should_exit = asyncio.Event()
        self.took_lead = asyncio.Event()
        # Until when (monotonic) this process may believe it leads: the last successful
        # renewal's start plus the TTL. Past it, it sends nothing even before Redis says so.
        self.lead_valid_until = 0.0

    @classmethod
    def from_settings(cls) -> Scheduler:
        return cls(default_jobs(), settings.SCHEDULER_LEASE_TTL_MS)

    def run(self) -> None:
        asyncio.run(self.serve())

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.handle_exit, signum)
        self.redis = redis_connections.async_client(socket_timeout=1, socket_connect_timeout=1)
        self.lease = Lease(self.redis, self.instance, self.lease_ttl_ms)
        self.channel_layer = get_channel_layer()
        log.info(
            "scheduler %s started with jobs: %s", self.instance, ", ".join(job.name for job in self.jobs)
        )
        keeper = loop.create_task(self.keep_lease())
        try:
            await self.main_loop()
        finally:
            keeper.cancel()
            try:
                await self.lease.release()
                await self.redis.zrem(keys.SCHEDULER_INSTANCES, self.instance)
            except redis.RedisError as error:
                log.warning("could not hand the lease back (%s); it lapses on its own", error)
            await self.redis.aclose()
            log.info("scheduler stopped")

    def handle_exit(self, signum: int) -> None:
        log.info("received %s, stopping after the current tick", signal.Signals(signum).name)
        self.should_exit.set()

    # --- the lease ------------------------------------------------------------------------

    def leads(self) -> bool:
        return self.lease.token is not None and time.monotonic() < self.lead_valid_until

    async def keep_lease(self) -> None:
        """Take the lease when it is free, renew it while held, and say this instance is alive."""
        alive_at = 0.0
        while not self.should_exit.is_set():
            started = time.monotonic()
            try:
                await self.hold_or_take_lease(started)
                if started - alive_at >= ALIVE_EVERY_S:
                    await heartbeats.mark_alive(self.redis, keys.SCHEDULER_INSTANCES, self.instance)
                    alive_at = started
            except redis.RedisError as error:
                log.warning("lease: Redis unavailable (%s)", error)
            if self.lease.token is not None and not self.leads():
                log.warning("lease %d lapsed before it could be renewed; standing by", self.lease.token)
                self.lease.token = None
            pause_s = self.renew_every_s if self.lease.token is not None else STANDBY_POLL_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.should_exit.wait(), pause_s)

    async def hold_or_take_lease(self, started: float) -> None:
        if self.lease.token is None:
            if await self.lease.acquire() is not None:
                self.lead_valid_until = started + self.lease_ttl_ms / 1000
                log.info("leading the clock with fencing token %d", self.lease.token)
                self.took_lead.set()
            return
        token = self.lease.token
        if await self.lease.renew():
            self.lead_valid_until = started + self.lease_ttl_ms / 1000
        else:
            log.warning("lease %d was taken over; standing by", token)

    # --- the clock ----------------------------------------------------------------------------

    async def main_loop(self) -> None:
        expected_ns = next_boundary_ns(time.time_ns(), self.period_ns)
        while not self.should_exit.is_set():
            tick = await self.wait_for(expected_ns)
            if tick is None:
                return
            expected_ns = tick.tick_ns + self.period_ns
            token = self.lease.token
            if token is None or not self.leads():
                continue  # standing by: keep time, send nothing
            if tick.skipped:
                log.warning("scheduler was late; skipped %d tick(s)", tick.skipped)
            await self.on_tick(tick, token)

    async def wait_for(self, expected_ns: int) -> Tick | None:
        """Sleep until the boundary ``expected_ns``, a shutdown (``None``) or taking the lead.

        On taking the lead, the boundary just passed is due at once if it is fresh enough:
        the previous leader may have died before sending it (if it did send it, the feed
        refuses the repeat).
        """
        while True:
            now_ns = time.time_ns()
            tick = due_tick(now_ns, expected_ns, self.period_ns)
            if tick is not None:
                return tick
            if self.took_lead.is_set():
                self.took_lead.clear()
                latest_ns = now_ns - now_ns % self.period_ns
                if now_ns - latest_ns <= CATCH_UP_NS:
                    return Tick(tick_ns=latest_ns, skipped=0)
            wakers = [
                asyncio.ensure_future(self.should_exit.wait()),
                asyncio.ensure_future(self.took_lead.wait()),
            ]
            try:
                await asyncio.wait(
                    wakers, timeout=(expected_ns - now_ns) / NS_PER_S, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waker in wakers:
                    waker.cancel()
            if self.should_exit.is_set():
                return None

    async def on_tick(self, tick: Tick, token: int) -> None:
        metrics.tick_sent_late(tick.tick_ns)
        for job in self.jobs:
            if (tick.tick_ns // NS_PER_S) % job.every_s:
                continue
            try:
                await job.run(self, tick, token)
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
        await self.redis.set(
            heartbeats.key(heartbeats.SCHEDULER), heartbeats.record(**fields), ex=heartbeats.TTL_S
        )
