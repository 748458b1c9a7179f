"""The clock's lease: one scheduler leads, the others stand by, and every lease is fenced.

A lease is a Redis key set-if-absent with a TTL, holding ``"<holder> <token>"``. The token
comes from a counter incremented with every new lease, so each later leader holds a larger
one. The holder renews well before the TTL lapses; a holder that cannot renew (it was
paused, partitioned, or Redis forgot it) has lost the lease and stands by.

A lease alone is a hint: a leader paused past its TTL wakes up believing it still leads.
So every tick carries the token, and the status feed admits a tick only if its token is
the lease's current one and no older than any token it has seen (``workers/feed.py``;
Kleppmann, "How to do distributed locking").
"""

from __future__ import annotations

import redis.asyncio as redis

from project import keys

# KEYS: lease, fence. ARGV: holder, ttl_ms. The new token, or nil if someone else holds it.
ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return nil end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'PX', ARGV[2])
return token
"""

# KEYS: lease. ARGV: "<holder> <token>", ttl_ms. 1 if still ours (and extended), else 0.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease. ARGV: "<holder> <token>". Hands the lease back at once on a clean stop.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    def __init__(self, client: redis.Redis, holder: str, ttl_ms: int) -> None:
        self.client = client
        self.holder = holder
        self.ttl_ms = ttl_ms
        self.token: int | None = None
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)

    @property
    def value(self) -> str:
        return f"{self.holder} {self.token}"

    async def acquire(self) -> int | None:
        """Take the lease if it is free; the new fencing token, or ``None``."""
        token = await self._acquire(
            keys=[keys.SCHEDULER_LEASE, keys.SCHEDULER_FENCE], args=[self.holder, self.ttl_ms]
        )
        self.token = None if token is None else int(token)
        return self.token

    async def renew(self) -> bool:
        """Extend the lease; ``False`` (and the token forgotten) if it is no longer ours."""
        if self.token is None:
            return False
        if await self._renew(keys=[keys.SCHEDULER_LEASE], args=[self.value, self.ttl_ms]):
            return True
        self.token = None
        return False

    async def release(self) -> None:
        if self.token is not None:
            await self._release(keys=[keys.SCHEDULER_LEASE], args=[self.value])
            self.token = None
