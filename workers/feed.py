"""The status feed's state, kept in Redis so that any status worker can advance it.

Several status workers may run at once and any of them may die at any line, so nothing about
the stream lives in a worker's memory. One Redis hash holds:

- ``epoch``: names the run of the sequence. Made once, when the hash does not exist, so it
  changes only when the sequence truly restarts (Redis lost its data), never when a worker
  or the scheduler is replaced.
- ``seq``: the last update stored; each update is stored with exactly ``seq + 1``, and only
  by the worker that read ``seq`` (optimistic concurrency: a loser hands its changes on).
- ``fence`` and ``tick_ms``: the newest fencing token and tick admitted. A tick is admitted
  only from the current lease holder, never with an older token, never twice.
- ``last_text``, ``last_seq``, ``sent_seq``: the last update as sent, and whether it is known
  to have been sent. A worker killed between storing an update and sending it leaves it
  unsent; whoever admits the next tick sends it first (clients ignore a repeat by its seq).

Beside it, the *pending* changes: a worker announces the machines it is about to change
before it changes them, and the update that carries them clears them. Whatever happens
in between (a crash, a lost race), the change stays pending and a later update carries it.

Every change is one Lua script, so each is atomic against the others.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

import redis

from project import keys

log = logging.getLogger(__name__)

# KEYS: feed. ARGV: a new epoch, used only if the feed has none. -> {epoch, seq}
CURRENT = """
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'seq', 0, 'sent_seq', 0)
end
return redis.call('HMGET', KEYS[1], 'epoch', 'seq')
"""

# KEYS: feed, lease. ARGV: token, tick_ms, a new epoch.
# -> {'ok', epoch, seq, unsent text or false} or {refusal}
ADMIT = """
local lease = redis.call('GET', KEYS[2])
if not lease then return {'no_leader'} end
if string.match(lease, ' (%d+)$') ~= ARGV[1] then return {'not_leader'} end
local token = tonumber(ARGV[1])
if token < tonumber(redis.call('HGET', KEYS[1], 'fence') or '0') then return {'stale_token'} end
local last_tick = redis.call('HGET', KEYS[1], 'tick_ms')
if last_tick and tonumber(ARGV[2]) <= tonumber(last_tick) then return {'repeat'} end
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[3]) == 1 then
  redis.call('HSET', KEYS[1], 'seq', 0, 'sent_seq', 0)
end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'tick_ms', ARGV[2])
local feed = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'last_seq', 'sent_seq', 'last_text')
local unsent = false
if feed[3] and tonumber(feed[3]) > tonumber(feed[4]) then unsent = feed[5] end
return {'ok', feed[1], feed[2], unsent}
"""

# KEYS: feed, pending. ARGV: epoch, seq read at admission, the update's text, then
# name, version pairs of the pending changes it carries.
# -> 1 if stored as seq + 1, 0 if another worker stored an update first. A pending change
# is cleared only at the version carried: one announced again meanwhile stays pending.
STORE = """
local feed = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
if feed[1] ~= ARGV[1] or feed[2] ~= ARGV[2] then return 0 end
local seq = tonumber(ARGV[2]) + 1
redis.call('HSET', KEYS[1], 'seq', seq, 'last_seq', seq, 'last_text', ARGV[3])
for i = 4, #ARGV, 2 do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[i + 1] then redis.call('HDEL', KEYS[2], ARGV[i]) end
end
return 1
"""

# KEYS: feed. ARGV: seq. Marks the update sent (never moving the mark back).
MARK_SENT = """
if tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[1], 'sent_seq') or '0') then
  redis.call('HSET', KEYS[1], 'sent_seq', ARGV[1])
end
return 1
"""


@dataclass(frozen=True)
class Admission:
    """A tick this worker may turn into update ``seq + 1``."""

    epoch: str
    seq: int
    unsent_text: str | None


def new_epoch() -> str:
    return secrets.token_hex(6)


class FeedStore:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._current = client.register_script(CURRENT)
        self._admit = client.register_script(ADMIT)
        self._store = client.register_script(STORE)
        self._mark_sent = client.register_script(MARK_SENT)

    def current(self) -> tuple[str, int]:
        """``(epoch, seq)`` of the last update stored (seq 0 before the first)."""
        epoch, seq = self._current(keys=[keys.STATUS_FEED], args=[new_epoch()])
        return epoch.decode(), int(seq)

    def admit(self, token: int, tick_ms: int) -> Admission | str:
        """An :class:`Admission` for this tick, or why it is refused (``"stale_token"``, ...)."""
        verdict = self._admit(keys=[keys.STATUS_FEED, keys.SCHEDULER_LEASE], args=[token, tick_ms, new_epoch()])
        if verdict[0] != b"ok":
            return verdict[0].decode()
        _, epoch, seq, unsent = verdict
        return Admission(epoch.decode(), int(seq), unsent.decode() if unsent else None)

    def pending(self) -> dict[str, int]:
        """Machines announced as changing that no stored update has carried yet, with versions."""
        return {name.decode(): int(version) for name, version in self.client.hgetall(keys.STATUS_FEED_PENDING).items()}

    def announce(self, names: set[str]) -> dict[str, int]:
        """Mark ``names`` as changing *before* the change is made, so that a worker killed after
        committing it leaves it pending for the next update; their new versions."""
        if not names:
            return {}
        ordered = sorted(names)
        with self.client.pipeline(transaction=False) as pipe:
            for name in ordered:
                pipe.hincrby(keys.STATUS_FEED_PENDING, name, 1)
            return dict(zip(ordered, pipe.execute()))

    def store(self, admission: Admission, text: str, carried: dict[str, int]) -> bool:
        """Store update ``admission.seq + 1``, clearing the pending changes it ``carried``;
        ``False`` if another worker stored one first (the changes stay pending)."""
        pairs = [item for name, version in sorted(carried.items()) for item in (name, version)]
        args = [admission.epoch, admission.seq, text, *pairs]
        return bool(self._store(keys=[keys.STATUS_FEED, keys.STATUS_FEED_PENDING], args=args))

    def mark_sent(self, seq: int) -> None:
        self._mark_sent(keys=[keys.STATUS_FEED], args=[seq])
