"""The fleet as the status stream last published it, and what each view shows of it.

Beside the feed (workers/feed.py), Redis holds every machine as the updates so far have left
it, written by the status worker in the same atomic step that stores each update: its compact
row (what views carry), its whole object (what the whole-fleet stream carries) and the names
in order, all and per state. So the fleet read there at ``seq`` N is exactly what a client
has after applying every update up to N, and a web process serves a joining socket's
snapshot from it without asking the worker (``read_snapshot``), consistent with the stream:
the socket's first update is N + 1.

Views (docs/protocol.md, "Views"): a :class:`~project.protocol.StatusView` is a page of the
machines matching a state and a name search. The worker computes each watched view's page
before and after a tick from a :class:`FleetIndex` and sends each view its own update, once,
to the view's group. The web processes say which views they watch in a registry
(``register_views``); the worker sends to those, and the view's snapshot read after the
registration is at a ``seq`` whose next update the worker sends to it.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from . import keys
from .protocol import STATUS_PAGE_SIZE, STATUS_SNAPSHOT, STATUS_VIEWS_MAX, StatusView, iso_utc

# A web process re-registers the views it shows this often; one not re-registered for
# VIEW_TTL_MS is dropped by the next update (its sockets closed, or their process died).
VIEW_REFRESH_S = 5
VIEW_TTL_MS = 20_000


def ordered_key(state: str | None) -> str:
    """The sorted set of names in name order: every machine's, or those in ``state``."""
    return keys.STATUS_NAMES if state is None else keys.STATUS_STATE_NAMES + state


# --- Rows --------------------------------------------------------------------------------------


def compact_row(machine: dict[str, Any]) -> list[Any]:
    """A machine object (workers/fleet.py) as a view's row:
    ``[name, state, progress, last_report, [[package, state, percent], ...]]``."""
    return [
        machine["name"],
        machine["state"],
        machine["progress"],
        machine["last_report"],
        [[package["name"], package["state"], package["percent"]] for package in machine["software"]],
    ]


@dataclass(frozen=True)
class Published:
    """One machine as an update publishes it: its state and both encodings."""

    name: str
    state: str
    row: bytes  # the compact row, for views
    whole: bytes  # the whole object, for the whole-fleet stream

    @classmethod
    def of(cls, machine: dict[str, Any]) -> Published:
        return cls(
            machine["name"], machine["state"], orjson.dumps(compact_row(machine)), orjson.dumps(machine)
        )


# --- Which machines a view shows ---------------------------------------------------------------


@dataclass
class FleetIndex:
    """Every machine's state, by name: which machines each view shows, in name order."""

    states: dict[str, str]
    names: list[str] = field(init=False)
    matching: dict[tuple[str | None, str | None], list[str]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.names = sorted(self.states)

    def members(self, view: StatusView) -> list[str]:
        """Every machine the view's state and search match (all its pages), in name order."""
        key = (view.state, view.search)
        if key not in self.matching:
            if view.search is not None:
                in_state = self.members(StatusView(state=view.state))
                self.matching[key] = [name for name in in_state if view.search in name.lower()]
            elif view.state is not None:
                self.matching[key] = [name for name in self.names if self.states[name] == view.state]
            else:
                self.matching[key] = self.names
        return self.matching[key]

    def page(self, view: StatusView) -> list[str]:
        return self.members(view)[view.first : view.first + STATUS_PAGE_SIZE]

    def after(self, changed: Iterable[Published], removed: Iterable[str]) -> FleetIndex:
        """The index once ``changed`` machines are published and ``removed`` ones are gone."""
        states = dict(self.states)
        states.update((machine.name, machine.state) for machine in changed)
        for name in removed:
            states.pop(name, None)
        return FleetIndex(states)


@dataclass(frozen=True)
class ViewChange:
    """What one view's update carries: the rows to show (changed or newly on the page), the
    names that left the page, and how many machines the view matches in all."""

    shown: list[str]
    left: list[str]
    total: int


def view_change(
    view: StatusView, before: FleetIndex, after: FleetIndex, changed: Collection[str]
) -> ViewChange:
    was, now = before.page(view), after.page(view)
    was_set = set(was)
    shown = [name for name in now if name in changed or name not in was_set]
    left = sorted(was_set.difference(now))
    return ViewChange(shown, left, len(after.members(view)))


def view_header(view: StatusView, total: int) -> dict[str, Any]:
    return {**view.describe(), "total": total, "page_size": STATUS_PAGE_SIZE}


# --- Snapshots, read from Redis by any process -------------------------------------------------

# KEYS: feed, the ordered names (all, or one state's), the rows (compact or whole).
# ARGV: first index, how many (0: all), a lower-case search ('' for none).
# -> {'unpublished'} when the fleet in Redis is not the fleet at seq (nothing published in this
# epoch yet, or an update stored without it; the next tick publishes it), else
# {'ok', epoch, seq, summary, system, total, row...}: the rows of the names from ``first`` on.
SNAPSHOT = """
local feed = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'published', 'summary', 'system')
if not feed[1] or feed[3] ~= feed[1] .. ' ' .. feed[2] then return {'unpublished'} end
local first, count, search = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local names, total
if search == '' then
  total = redis.call('ZCARD', KEYS[2])
  local last = -1
  if count > 0 then last = first + count - 1 end
  names = redis.call('ZRANGE', KEYS[2], first, last)
else
  names, total = {}, 0
  for _, name in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if string.find(string.lower(name), search, 1, true) then
      if total >= first and (count == 0 or total < first + count) then names[#names + 1] = name end
      total = total + 1
    end
  end
end
local out = {'ok', feed[1], feed[2], feed[4], feed[5], total}
for _, name in ipairs(names) do out[#out + 1] = redis.call('HGET', KEYS[3], name) end
return out
"""


def snapshot_call(view: StatusView | None) -> tuple[list[str], list[Any]]:
    """``(keys, args)`` of :data:`SNAPSHOT` for ``view`` (``None``: the whole fleet, whole objects)."""
    if view is None:
        return [keys.STATUS_FEED, keys.STATUS_NAMES, keys.STATUS_MACHINES], [0, 0, ""]
    return [keys.STATUS_FEED, ordered_key(view.state), keys.STATUS_ROWS], [
        view.first,
        STATUS_PAGE_SIZE,
        view.search or "",
    ]


@dataclass(frozen=True)
class Snapshot:
    epoch: str
    seq: int
    text: str


def snapshot_from(view: StatusView | None, reply: list[Any]) -> Snapshot | None:
    """The encoded ``status.snapshot`` from a :data:`SNAPSHOT` reply; ``None`` if unpublished."""
    if reply[0] != b"ok":
        return None
    _, epoch, seq, summary, system, total, *rows = reply
    frame: dict[str, Any] = {
        "type": STATUS_SNAPSHOT,
        "epoch": epoch.decode(),
        "seq": int(seq),
        "ts": iso_utc(datetime.now(UTC)),
    }
    listed = [orjson.Fragment(row) for row in rows if row is not None]
    if view is None:
        frame["machines"] = listed
    else:
        frame["view"] = view_header(view, int(total))
        frame["rows"] = listed
    frame["summary"] = orjson.Fragment(summary)
    frame["system"] = orjson.Fragment(system)
    return Snapshot(frame["epoch"], frame["seq"], orjson.dumps(frame).decode())


# --- The registry of watched views -------------------------------------------------------------

# KEYS: views (group -> view JSON), their deadlines (sorted set), feed.
# ARGV: now ms, deadline ms, the most views there may be, then group, view JSON pairs.
# Drops the views past their deadline; renews those given; adds those new to the registry while
# it holds fewer than the most, bumping the feed's ``views_version`` so that an update being
# built without them is built again (workers/feed.py). -> how many were added, or minus how
# many were refused.
REGISTER = """
for _, group in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])) do
  redis.call('HDEL', KEYS[1], group)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local added, refused = 0, 0
for i = 4, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
    refused = refused + 1
  else
    added = added + redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[i])
  end
end
if added > 0 then redis.call('HINCRBY', KEYS[3], 'views_version', 1) end
if refused > 0 then return -refused end
return added
"""


class TooManyViews(Exception):
    """The registry holds STATUS_VIEWS_MAX views already: a new one is not served."""


def register_call(views: Iterable[StatusView]) -> tuple[list[str], list[Any]]:
    """``(keys, args)`` of :data:`REGISTER` for ``views``, watched for the next VIEW_TTL_MS."""
    now_ms = int(time.time() * 1000)
    args: list[Any] = [now_ms, now_ms + VIEW_TTL_MS, STATUS_VIEWS_MAX]
    for view in views:
        args += [view.group, orjson.dumps(view.describe())]
    return [keys.STATUS_VIEWS, keys.STATUS_VIEW_DEADLINES, keys.STATUS_FEED], args


def watched_views(encoded: dict[bytes, bytes]) -> list[StatusView]:
    """The registry's views (its hash, as HGETALL returns it)."""
    return [StatusView(**orjson.loads(spec)) for spec in encoded.values()]
