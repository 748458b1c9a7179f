"""Fair shares at the socket edge: what one socket, and one user, may ask of the workers.

Every user shares the worker channels, so one user's flood (history requests, joins) would
delay everyone else's messages. Three bounds stop that before anything reaches a worker:

- **per socket, per frame type**: a token bucket (``settings.EDGE_LIMITS`` for the classes of
  ``protocol.EDGE_LIMITED``) in the socket's own memory, refused with ``rate_limited`` and
  ``retry_after``;
- **sockets per user** (``SOCKETS_PER_USER_MAX``), across every web process and host, and
- **handshakes per user per second** (``JOINS_PER_USER_PER_S``), both checked in one Redis
  script at the handshake and refused with close code 4029.

Guests (``ALLOW_ANONYMOUS``) are counted by client address. A user's total rate into the
workers is therefore at most SOCKETS_PER_USER_MAX × the per-socket rates, plus the joins.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis.asyncio as redis
from django.conf import settings

from project import keys, redis_connections

log = logging.getLogger(__name__)

# A socket's entry in its user's set lives this long unless its process renews it; a web
# process that dies without cleaning up frees its users' places within this time.
SOCKET_ENTRY_TTL_MS = 60_000
RENEW_EVERY_S = 20


@dataclass
class TokenBucket:
    """``burst`` frames at once, then ``per_s`` a second."""

    burst: float
    per_s: float
    tokens: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float | None = None) -> float | None:
        """``None`` if a frame may pass now (and it is counted), else seconds until one may."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.per_s)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return math.ceil((1 - self.tokens) / self.per_s * 1000) / 1000


class FrameLimits:
    """One socket's buckets, one per limited frame type (``protocol.EDGE_LIMITED``)."""

    def __init__(self, classes: Mapping[str, str], limits: Mapping[str, tuple[float, float]]) -> None:
        self.buckets = {frame_type: TokenBucket(*limits[kind]) for frame_type, kind in classes.items()}

    def take(self, frame_type: str) -> float | None:
        bucket = self.buckets.get(frame_type)
        return None if bucket is None else bucket.take()


# KEYS: the user's socket set, the user's joins this second. ARGV: socket, now_ms, entry ttl_ms,
# sockets max, joins max. -> "ok", "too_many_sockets" or "too_many_joins".
ADMIT = """
if redis.call('INCR', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], 1000) end
if tonumber(redis.call('GET', KEYS[2])) > tonumber(ARGV[5]) then return 'too_many_joins' end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 'too_many_sockets' end
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 'ok'
"""


def user_key(scope: dict) -> str:
    user = scope.get("user")
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    client = scope.get("client") or ("unknown", 0)
    return f"addr:{client[0]}"


class SocketRegistry:
    """This process's sockets in their users' sets in Redis: admitted, renewed, released."""

    def __init__(self) -> None:
        self.client: redis.Redis | None = None
        self.client_loop: asyncio.AbstractEventLoop | None = None
        self.sockets: dict[str, str] = {}  # channel name -> user key
        self.renewer: asyncio.Task | None = None
        self.released: list[tuple[str, str]] = []  # (user key, channel) not yet removed in Redis
        self.releaser: asyncio.Task | None = None

    def redis(self) -> redis.Redis:
        # One client per event loop (a web process has one; tests run a loop per test).
        loop = asyncio.get_running_loop()
        if self.client is None or self.client_loop is not loop:
            self.client = redis_connections.async_client(socket_timeout=1, socket_connect_timeout=1)
            self.client_loop = loop
        return self.client

    async def admit(self, scope: dict, channel: str) -> str | None:
        """``None`` if this socket may open, else why not (``too_many_sockets``, ``too_many_joins``).

        If Redis cannot be asked, the socket is let in: the limit is a fairness bound, not an
        authentication, and the service must not refuse everyone because Redis blinked."""
        user = user_key(scope)
        try:
            verdict = await self.redis().eval(
                ADMIT,
                2,
                keys.USER_SOCKETS + user,
                f"{keys.USER_JOINS}{user}:{int(time.time())}",
                channel,
                int(time.time() * 1000),
                SOCKET_ENTRY_TTL_MS,
                settings.SOCKETS_PER_USER_MAX,
                settings.JOINS_PER_USER_PER_S,
            )
        except redis.RedisError as error:
            log.warning("could not check the socket limits (%s); letting the socket in", error)
            verdict = b"ok"
        if verdict != b"ok":
            return verdict.decode()
        self.sockets[channel] = user
        if self.renewer is None or self.renewer.done():
            self.renewer = asyncio.get_running_loop().create_task(self.renew_forever())
        return None

    async def release(self, channel: str) -> None:
        """Give the socket's place back. Removals are sent in batches by one task: when a web
        process restarts or a network blinks, thousands of sockets close in the same instant,
        and one Redis command each at once would exhaust the client's connections."""
        user = self.sockets.pop(channel, None)
        if user is None:
            return
        self.released.append((user, channel))
        if self.releaser is None or self.releaser.done():
            self.releaser = asyncio.get_running_loop().create_task(self.release_batches())

    async def release_batches(self) -> None:
        await asyncio.sleep(0)  # let the sockets closing in this instant join the first batch
        while self.released:
            batch, self.released = self.released, []
            try:
                async with self.redis().pipeline(transaction=False) as pipe:
                    for user, channel in batch:
                        pipe.zrem(keys.USER_SOCKETS + user, channel)
                    await pipe.execute()
            except redis.RedisError as error:  # the entries expire on their own
                log.warning("could not release %d socket place(s) (%s)", len(batch), error)

    async def renew_forever(self) -> None:
        """Keep this process's entries alive while it has sockets."""
        while self.sockets:
            await asyncio.sleep(RENEW_EVERY_S)
            expires_ms = int(time.time() * 1000) + SOCKET_ENTRY_TTL_MS
            try:
                async with self.redis().pipeline(transaction=False) as pipe:
                    for channel, user in list(self.sockets.items()):
                        pipe.zadd(keys.USER_SOCKETS + user, {channel: expires_ms})
                        pipe.pexpire(keys.USER_SOCKETS + user, SOCKET_ENTRY_TTL_MS)
                    await pipe.execute()
            except redis.RedisError as error:
                log.warning("could not renew %d socket place(s) (%s)", len(self.sockets), error)


sockets = SocketRegistry()
