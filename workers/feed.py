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

And the fleet as the stored updates left it (project/statusviews.py): every update writes the
machines it carries, with its summary and system panel and its frame for each watched view,
in the step that stores it (``published``: the epoch and seq it is at); ``seed`` writes the
whole fleet when it is not the fleet at ``seq`` (a new epoch, or an update stored without it
by a worker of an older version). An update is stored only if no view was added to the registry since its frames were built
(:class:`ViewsChanged`), so that a socket that registered a view and then read its snapshot
always gets the view's next update.

Every change is one Lua script, so each is atomic against the others.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import redis

from project import keys
from project.protocol import MACHINE_STATES
from project.statusviews import FleetIndex, Published, StatusView, watched_views

log = logging.getLogger(__name__)

# KEYS: feed. ARGV: a new epoch, used only if the feed has none. -> {epoch, seq}
CURRENT = """
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'seq', 0, 'sent_seq', 0)
end
return redis.call('HMGET', KEYS[1], 'epoch', 'seq')
"""

# KEYS: feed, lease, last views. ARGV: token, tick_ms, a new epoch.
# -> {'ok', epoch, seq, published (0/1: the fleet in Redis is at seq), unsent text or false,
# [group, text]...} or {refusal}
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
local feed = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'last_seq', 'sent_seq', 'last_text', 'published')
local published = 0
if feed[6] == feed[1] .. ' ' .. feed[2] then published = 1 end
if not (feed[3] and tonumber(feed[3]) > tonumber(feed[4])) then return {'ok', feed[1], feed[2], published, false} end
local out = {'ok', feed[1], feed[2], published, feed[5]}
for _, item in ipairs(redis.call('HGETALL', KEYS[3])) do out[#out + 1] = item end
return out
"""

# KEYS: feed, pending, rows, machines, names, last views, views, view deadlines, then the
# five states' names. ARGV: epoch, seq read at admission, the update's text, whether it
# publishes the fleet (0/1), summary, system, views_version read, now_ms, then counted lists:
# pending (name, version), published (name, state's index 1-5, row, whole), removed names,
# view frames (group, text).
# -> 1 if stored as seq + 1; 0 if another worker stored an update first; -1 if a view was
# registered since ``views_version`` was read (nothing stored). A pending change is cleared
# only at the version carried: one announced again meanwhile stays pending.
STORE = """
local feed = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'views_version')
if feed[1] ~= ARGV[1] or feed[2] ~= ARGV[2] then return 0 end
local publishes = ARGV[4] == '1'
if publishes and (feed[3] or '0') ~= ARGV[7] then return -1 end
local seq = tonumber(ARGV[2]) + 1
redis.call('HSET', KEYS[1], 'seq', seq, 'last_seq', seq, 'last_text', ARGV[3])
local i = 9
local function count()
  i = i + 1
  return tonumber(ARGV[i - 1])
end
for _ = 1, count() do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[i + 1] then redis.call('HDEL', KEYS[2], ARGV[i]) end
  i = i + 2
end
if not publishes then return 1 end
redis.call('HSET', KEYS[1], 'published', ARGV[1] .. ' ' .. seq, 'summary', ARGV[5], 'system', ARGV[6])
for _ = 1, count() do
  local name = ARGV[i]
  for k = 9, 13 do redis.call('ZREM', KEYS[k], name) end
  redis.call('ZADD', KEYS[8 + tonumber(ARGV[i + 1])], 0, name)
  redis.call('ZADD', KEYS[5], 0, name)
  redis.call('HSET', KEYS[3], name, ARGV[i + 2])
  redis.call('HSET', KEYS[4], name, ARGV[i + 3])
  i = i + 4
end
for _ = 1, count() do
  for k = 9, 13 do redis.call('ZREM', KEYS[k], ARGV[i]) end
  redis.call('ZREM', KEYS[5], ARGV[i])
  redis.call('HDEL', KEYS[3], ARGV[i])
  redis.call('HDEL', KEYS[4], ARGV[i])
  i = i + 1
end
redis.call('DEL', KEYS[6])
for _ = 1, count() do
  redis.call('HSET', KEYS[6], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for _, group in ipairs(redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', ARGV[8])) do
  redis.call('HDEL', KEYS[7], group)
end
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', ARGV[8])
return 1
"""

# KEYS: feed, rows, machines, names, the five states' names. ARGV: epoch, seq, summary,
# system, then (name, state's index 1-5, row, whole) of every machine.
# -> 1 if written as the fleet at seq, 0 if another worker stored an update meanwhile.
SEED = """
local feed = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
if feed[1] ~= ARGV[1] or feed[2] ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9])
for i = 5, #ARGV, 4 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 3])
  redis.call('ZADD', KEYS[4], 0, ARGV[i])
  redis.call('ZADD', KEYS[4 + tonumber(ARGV[i + 1])], 0, ARGV[i])
end
redis.call('HSET', KEYS[1], 'published', ARGV[1] .. ' ' .. ARGV[2], 'summary', ARGV[3], 'system', ARGV[4])
return 1
"""

# KEYS: feed. ARGV: seq. Marks the update sent (never moving the mark back).
MARK_SENT = """
if tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[1], 'sent_seq') or '0') then
  redis.call('HSET', KEYS[1], 'sent_seq', ARGV[1])
end
return 1
"""

# KEYS: pending. ARGV: machine names. Bumps each name's version; -> the new versions, in order.
# One command with a name per argument: a pipeline of an HINCRBY per name cost the worker
# 12 % of its tick at 1,000 reports a second (redis-py packs each command in Python).
ANNOUNCE = """
local versions = {}
for i, name in ipairs(ARGV) do
  versions[i] = redis.call('HINCRBY', KEYS[1], name, 1)
end
return versions
"""


@dataclass(frozen=True)
class Admission:
    """A tick this worker may turn into update ``seq + 1``."""

    epoch: str
    seq: int
    unsent_text: str | None
    # The fleet in Redis is the fleet at ``seq`` (``False``: nothing was published in this epoch,
    # or an update was stored without publishing the fleet; publish it whole first).
    published: bool = True
    # Each view's frame of the unsent update, by group.
    unsent_views: dict[str, str] = field(default_factory=dict)


@dataclass
class Publication:
    """What an update publishes beside its text: the machines it carries, the fleet's summary
    and system panel, and its frame for each watched view, built with the registry at
    ``views_version``."""

    published: list[Published]
    removed: list[str]
    summary: bytes
    system: bytes
    view_frames: dict[str, str]
    views_version: int


class ViewsChanged(Exception):
    """A view was registered after the update's frames were built: build them again."""


def state_index(state: str) -> int:
    """The 1-based place of ``state``'s sorted set among the scripts' KEYS."""
    return MACHINE_STATES.index(state) + 1


STATE_KEYS = [keys.STATUS_STATE_NAMES + state for state in MACHINE_STATES]


def new_epoch() -> str:
    return secrets.token_hex(6)


class FeedStore:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._current = client.register_script(CURRENT)
        self._admit = client.register_script(ADMIT)
        self._store = client.register_script(STORE)
        self._seed = client.register_script(SEED)
        self._mark_sent = client.register_script(MARK_SENT)
        self._announce = client.register_script(ANNOUNCE)

    def current(self) -> tuple[str, int]:
        """``(epoch, seq)`` of the last update stored (seq 0 before the first)."""
        epoch, seq = self._current(keys=[keys.STATUS_FEED], args=[new_epoch()])
        return epoch.decode(), int(seq)

    def admit(self, token: int, tick_ms: int) -> Admission | str:
        """An :class:`Admission` for this tick, or why it is refused (``"stale_token"``, ...)."""
        verdict = self._admit(
            keys=[keys.STATUS_FEED, keys.SCHEDULER_LEASE, keys.STATUS_LAST_VIEWS],
            args=[token, tick_ms, new_epoch()],
        )
        if verdict[0] != b"ok":
            return verdict[0].decode()
        _, epoch, seq, published, unsent, *views = verdict
        unsent_views = {
            group.decode(): text.decode() for group, text in zip(views[::2], views[1::2], strict=True)
        }
        return Admission(
            epoch.decode(), int(seq), unsent.decode() if unsent else None, bool(published), unsent_views
        )

    def pending(self) -> dict[str, int]:
        """Machines announced as changing that no stored update has carried yet, with versions."""
        return {
            name.decode(): int(version)
            for name, version in cast(
                dict[bytes, bytes], self.client.hgetall(keys.STATUS_FEED_PENDING)
            ).items()
        }

    def announce(self, names: set[str]) -> dict[str, int]:
        """Mark ``names`` as changing *before* the change is made, so that a worker killed after
        committing it leaves it pending for the next update; their new versions."""
        if not names:
            return {}
        ordered = sorted(names)
        versions = self._announce(keys=[keys.STATUS_FEED_PENDING], args=ordered)
        return dict(zip(ordered, versions, strict=True))

    def store(
        self, admission: Admission, text: str, carried: dict[str, int], publication: Publication | None = None
    ) -> bool:
        """Store update ``admission.seq + 1``, clearing the pending changes it ``carried`` and
        writing what it publishes; ``False`` if another worker stored one first (the changes
        stay pending). Raises :class:`ViewsChanged` (nothing stored) if a view was registered
        since ``publication.views_version``."""
        args: list = [admission.epoch, admission.seq, text, int(publication is not None)]
        if publication is None:
            args += ["", "", 0, 0]
        else:
            args += [
                publication.summary,
                publication.system,
                publication.views_version,
                int(time.time() * 1000),
            ]
        args += counted(sorted(carried.items()))
        if publication is not None:
            args += counted((m.name, state_index(m.state), m.row, m.whole) for m in publication.published)
            args += counted((name,) for name in publication.removed)
            args += counted(publication.view_frames.items())
        verdict = self._store(
            keys=[
                keys.STATUS_FEED,
                keys.STATUS_FEED_PENDING,
                keys.STATUS_ROWS,
                keys.STATUS_MACHINES,
                keys.STATUS_NAMES,
                keys.STATUS_LAST_VIEWS,
                keys.STATUS_VIEWS,
                keys.STATUS_VIEW_DEADLINES,
                *STATE_KEYS,
            ],
            args=args,
        )
        if verdict == -1:
            raise ViewsChanged()
        return bool(verdict)

    def seed(self, epoch: str, seq: int, fleet: Iterable[Published], summary: bytes, system: bytes) -> bool:
        """Write the whole fleet as the fleet at ``seq``; ``False`` if another worker stored an
        update meanwhile (the next tick seeds again)."""
        args: list = [epoch, seq, summary, system]
        for machine in fleet:
            args += [machine.name, state_index(machine.state), machine.row, machine.whole]
        return bool(
            self._seed(
                keys=[
                    keys.STATUS_FEED,
                    keys.STATUS_ROWS,
                    keys.STATUS_MACHINES,
                    keys.STATUS_NAMES,
                    *STATE_KEYS,
                ],
                args=args,
            )
        )

    def index(self) -> FleetIndex:
        """Every published machine's state: the fleet's order, for the views."""
        with self.client.pipeline(transaction=True) as pipe:
            for key in STATE_KEYS:
                pipe.zrange(key, 0, -1)
            names_per_state = pipe.execute()
        return FleetIndex(
            {
                name.decode(): state
                for state, names in zip(MACHINE_STATES, names_per_state, strict=True)
                for name in names
            }
        )

    def watched(self) -> tuple[list[StatusView], int]:
        """The views some web process shows, and the registry's version."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.STATUS_VIEWS)
            pipe.hget(keys.STATUS_FEED, "views_version")
            views, version = pipe.execute()
        return watched_views(views), int(version or 0)

    def rows(self, names: list[str]) -> dict[str, bytes]:
        """Published compact rows of ``names``."""
        # Every name a view shows has a published row (rows are written before names are indexed).
        rows = cast(list[bytes], self.client.hmget(keys.STATUS_ROWS, names)) if names else []
        return dict(zip(names, rows, strict=True))

    def mark_sent(self, seq: int) -> None:
        self._mark_sent(keys=[keys.STATUS_FEED], args=[seq])


def counted(items: Iterable[tuple]) -> list:
    """A list of tuples as the scripts take it: how many, then their fields, flattened."""
    listed = list(items)
    return [len(listed), *(value for item in listed for value in item)]
