"""Agent reports between the API and the status workers: a Redis stream read as a group.

``202`` from the report API means the report is in this stream, which outlives every
process but Redis itself. Status workers read it as one consumer group: each entry goes
to one worker, stays pending under that worker until it is acknowledged, and is
acknowledged only once an update carrying its machines is stored. A worker killed in
between leaves its entries pending; another worker claims them after
``CLAIM_IDLE_MS`` and applies them again. Applying is idempotent: a report whose id
is not newer than the one its machine last handled is skipped (``workers/coalesce.py``).

A stream entry carries up to ``ENTRY_ITEMS_MAX`` reports (a batch's, in its order, or single
reports that arrived together, in theirs): reading, acknowledging and deleting 10,000 reports as 100 entries
costs the worker and Redis a hundredth of what 10,000 entries did (docs/performance.md). Each
report's id is its entry's id, followed by ``/<index>`` after the first (``1700000000000-0``,
``1700000000000-0/1``, ...), which sorts in the order the reports were queued.

How many reports wait (queued, not yet acknowledged) is counted beside the stream
(``keys.REPORTS_WAITING``), in the same script that adds them and the one that deletes them;
past ``max_waiting`` the API answers ``503 server_busy``. An empty stream resets the count, so a
count left wrong (Redis failed over between the two) mends itself once the workers catch up.

Single reports from many requests are queued together (:class:`Together`): while one call to
Redis is in flight, the reports that arrive wait for the next, which carries them all as one
entry per ``ENTRY_ITEMS_MAX``; and while reports keep coming, each call waits ``linger_s``
(``REPORTS_LINGER_MS``) for more first. A report is applied on the next tick whatever it does,
so a few milliseconds cost it nothing, and at a thousand reports a second evenly spread the web,
Redis and the workers handle about a hundred entries a second instead of a thousand.

The web side (:func:`enqueue_many`, :class:`Together`) is asyncio; the worker side
(:class:`ReportReader`) is sync.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import redis.asyncio

from . import keys

log = logging.getLogger(__name__)

# Longer than any tick takes to handle, so that a live worker's entries are never claimed.
CLAIM_IDLE_MS = 5000
REPORT = "report"
REMOVE = "remove"
ENTRY_ITEMS_MAX = 100  # reports per stream entry
ENTRIES_PER_READ = 200  # stream entries per XREADGROUP / XAUTOCLAIM
ITEMS_PER_READ = 20_000  # a worker reads more only until it holds this many reports
ITEMS_PER_CALL = 1_000  # single reports queued together in one round trip, at most
BUSY_WITHIN_S = 0.1  # a call this soon after the previous one lingers first (reports keep coming)

# KEYS: stream, waiting count. ARGV: max waiting, then (report count, entry) pairs. The new
# entries' ids, or nil (none queued) when they would make more than max wait: all or none.
ENQUEUE = """
local waiting = tonumber(redis.call('GET', KEYS[2]) or '0')
if redis.call('XLEN', KEYS[1]) == 0 then waiting = 0 end
local adding = 0
for i = 2, #ARGV, 2 do adding = adding + tonumber(ARGV[i]) end
if waiting + adding > tonumber(ARGV[1]) then return nil end
local ids = {}
for i = 2, #ARGV, 2 do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'e', ARGV[i + 1])
end
redis.call('SET', KEYS[2], waiting + adding)
return ids
"""

# KEYS: stream, waiting count. ARGV: group, then (entry id, report count) pairs. Acknowledges
# and deletes the entries; the count falls by the reports of those this call deleted (an entry
# two workers handled is counted off once).
DONE = """
local gone = 0
for i = 2, #ARGV, 2 do
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then gone = gone + tonumber(ARGV[i + 1]) end
end
if gone > 0 and redis.call('DECRBY', KEYS[2], gone) < 0 then redis.call('SET', KEYS[2], 0) end
return gone
"""


@dataclass(frozen=True)
class Entry:
    """One report (or removal) as queued; ``id`` as described above."""

    id: str
    kind: str
    name: str
    report: dict[str, Any] | None

    @property
    def stream_id(self) -> str:
        return self.id.partition("/")[0]


def report_id(stream_id: str, index: int) -> str:
    return stream_id if index == 0 else f"{stream_id}/{index}"


def stream_order(entry_id: str) -> tuple[int, int, int]:
    """A report's id (``"<ms>-<n>[/<index>]"``) as something that sorts in queued order."""
    stream_id, _, index = entry_id.partition("/")
    ms, _, n = stream_id.partition("-")
    return int(ms), int(n or 0), int(index or 0)


Item = tuple[str, str, dict[str, Any] | None]  # (kind, name, report)


class Together:
    """Queues single reports (or removals) from many requests of one process together.

    :meth:`enqueue` waits while one call to Redis is in flight; the next call carries every
    report that arrived meanwhile (up to ``ITEMS_PER_CALL``), in arrival order, so a machine's
    reports keep their order. A call that follows the previous one within ``BUSY_WITHIN_S``
    first waits ``linger_s`` for more; one after a quiet spell goes at once. The reports of one
    call are queued all or none, as a batch's are: near ``max_waiting`` a call's reports are
    refused together (``503``, retried by the agents).
    """

    def __init__(self, client: redis.asyncio.Redis, max_waiting: int, linger_s: float = 0.0) -> None:
        self.client = client
        self.max_waiting = max_waiting
        self.linger_s = linger_s
        self.waiting: list[tuple[Item, asyncio.Future[str | None]]] = []
        self.sender: asyncio.Task | None = None
        self.last_call_at = float("-inf")  # loop time

    async def enqueue(self, kind: str, name: str, report: dict[str, Any] | None) -> str | None:
        """Queue a checked report (or a removal) for the status workers; its id, or ``None`` if
        full. Raises what Redis raised, as :func:`enqueue_many` does."""
        loop = asyncio.get_running_loop()
        queued: asyncio.Future[str | None] = loop.create_future()
        self.waiting.append(((kind, name, report), queued))
        if self.sender is None or self.sender.done() or self.sender.get_loop() is not loop:
            self.sender = loop.create_task(self.send_all())
        return await queued

    async def send_all(self) -> None:
        loop = asyncio.get_running_loop()
        while self.waiting:
            if self.linger_s and loop.time() - self.last_call_at < BUSY_WITHIN_S:
                await asyncio.sleep(self.linger_s)
            self.last_call_at = loop.time()
            taken, self.waiting = self.waiting[:ITEMS_PER_CALL], self.waiting[ITEMS_PER_CALL:]
            try:
                ids = await enqueue_many(self.client, [item for item, _ in taken], self.max_waiting)
            except Exception as error:  # Redis away: each request answers for itself
                for _, queued in taken:
                    if not queued.done():
                        queued.set_exception(error)
                continue
            for index, (_, queued) in enumerate(taken):
                if not queued.done():  # its request was cancelled: the report is queued anyway
                    queued.set_result(None if ids is None else ids[index])


async def enqueue(
    client: redis.asyncio.Redis, kind: str, name: str, report: dict[str, Any] | None, max_waiting: int
) -> str | None:
    """Queue one checked report (or a removal) in a round trip of its own; its id, or ``None`` if
    full. The API queues through :class:`Together` instead."""
    ids = await enqueue_many(client, [(kind, name, report)], max_waiting)
    return None if ids is None else ids[0]


async def enqueue_many(client: redis.asyncio.Redis, items: list[Item], max_waiting: int) -> list[str] | None:
    """Queue ``(kind, name, report)`` items in their order, all or none, in one round trip;
    their ids, or ``None`` when that would leave more than ``max_waiting`` waiting."""
    chunks = [items[start : start + ENTRY_ITEMS_MAX] for start in range(0, len(items), ENTRY_ITEMS_MAX)]
    args: list[Any] = []
    for chunk in chunks:
        body = [{"kind": kind, "name": name, "report": report} for kind, name, report in chunk]
        args += [len(chunk), orjson.dumps(body)]
    ids = await client.eval(ENQUEUE, 2, keys.REPORTS_STREAM, keys.REPORTS_WAITING, max_waiting, *args)
    if ids is None:
        return None
    return [
        report_id(stream_id.decode(), index)
        for stream_id, chunk in zip(ids, chunks, strict=True)
        for index in range(len(chunk))
    ]


def waiting(client: redis.Redis) -> int:
    """How many reports are queued and not yet acknowledged."""
    return int(client.get(keys.REPORTS_WAITING) or 0) if client.xlen(keys.REPORTS_STREAM) else 0


class ReportReader:
    """One status worker's end of the stream."""

    def __init__(self, client: redis.Redis, consumer: str, items_max: int = ITEMS_PER_READ) -> None:
        self.client = client
        self.consumer = consumer
        self.items_max = items_max
        self._done = client.register_script(DONE)

    def read(self) -> list[Entry]:
        """Reports a dead worker left unfinished, then new ones, oldest first; never blocks."""
        try:
            return self._read()
        except redis.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            # First start, or Redis restarted empty: the group (from the stream's start) is made anew.
            try:
                self.client.xgroup_create(keys.REPORTS_STREAM, keys.REPORTS_GROUP, id="0", mkstream=True)
            except redis.ResponseError as exists:
                if "BUSYGROUP" not in str(exists):
                    raise
            return self._read()

    def _read(self) -> list[Entry]:
        # [next cursor, claimed, (Redis 7: deleted ids)]
        claimed = self.client.xautoclaim(
            keys.REPORTS_STREAM,
            keys.REPORTS_GROUP,
            self.consumer,
            CLAIM_IDLE_MS,
            "0-0",
            count=ENTRIES_PER_READ,
        )[1]
        if claimed:
            log.warning("claimed %d report entries a stopped status worker left unapplied", len(claimed))
        entries = self.decode_all(claimed)
        while len(entries) < self.items_max:
            fresh: list[Any] = self.client.xreadgroup(  # type: ignore[assignment]  # [(stream, [(id, fields)])]
                keys.REPORTS_GROUP, self.consumer, {keys.REPORTS_STREAM: ">"}, count=ENTRIES_PER_READ
            )
            raw = [item for _, items in fresh for item in items]
            entries += self.decode_all(raw)
            if len(raw) < ENTRIES_PER_READ:
                break
        return sorted(entries, key=lambda entry: stream_order(entry.id))

    @classmethod
    def decode_all(cls, raw: Iterable[tuple[bytes, dict[bytes, bytes] | None]]) -> list[Entry]:
        # A deleted entry claimed again comes back without fields.
        return [entry for entry_id, fields in raw if fields for entry in cls.decode(entry_id, fields)]

    @staticmethod
    def decode(entry_id: bytes, fields: dict[bytes, bytes]) -> list[Entry]:
        stream_id = entry_id.decode()
        body = orjson.loads(fields[b"e"])
        if isinstance(body, dict):  # one report per entry: queued by a web process from before batches
            body = [body]
        return [
            Entry(report_id(stream_id, index), item["kind"], item["name"], item.get("report"))
            for index, item in enumerate(body)
        ]

    def done(self, entries: list[Entry]) -> None:
        """Acknowledge and delete ``entries``' stream entries: an update carrying them is stored.
        An entry's reports are read together, so they are done together."""
        if not entries:
            return
        per_entry = Counter(entry.stream_id for entry in entries)
        args = [part for stream_id, count in per_entry.items() for part in (stream_id, count)]
        self._done(keys=[keys.REPORTS_STREAM, keys.REPORTS_WAITING], args=[keys.REPORTS_GROUP, *args])
