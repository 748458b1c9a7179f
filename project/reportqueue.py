"""Agent reports between the API and the status workers: a Redis stream read as a group.

``202`` from the report API means the report is in this stream, which outlives every
process but Redis itself. Status workers read it as one consumer group: each entry goes
to one worker, stays pending under that worker until it is acknowledged, and is
acknowledged only once an update carrying its machine is stored. A worker killed in
between leaves its entries pending; another worker claims them after
``CLAIM_IDLE_MS`` and applies them again. Applying is idempotent: an entry whose stream id
is not newer than the one its machine last handled is skipped (``workers/coalesce.py``).

The web side (:func:`enqueue`) is asyncio; the worker side (:class:`ReportReader`) is sync.
"""

from __future__ import annotations

import logging
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

# KEYS: stream. ARGV: max waiting, then entries. Their new ids, or nil (none queued) when
# they would make more than max wait: a batch is queued whole or not at all.
ENQUEUE = """
if redis.call('XLEN', KEYS[1]) + #ARGV - 1 > tonumber(ARGV[1]) then return nil end
local ids = {}
for i = 2, #ARGV do ids[i - 1] = redis.call('XADD', KEYS[1], '*', 'e', ARGV[i]) end
return ids
"""


@dataclass(frozen=True)
class Entry:
    id: str
    kind: str
    name: str
    report: dict[str, Any] | None


def stream_order(entry_id: str) -> tuple[int, int]:
    """A stream id (``"<ms>-<n>"``) as something that sorts in the order Redis gave them."""
    ms, _, n = entry_id.partition("-")
    return int(ms), int(n or 0)


async def enqueue(
    client: redis.asyncio.Redis, kind: str, name: str, report: dict[str, Any] | None, max_waiting: int
) -> str | None:
    """Queue a checked report (or a removal) for the status workers; its id, or ``None`` if full."""
    ids = await enqueue_many(client, [(kind, name, report)], max_waiting)
    return None if ids is None else ids[0]


async def enqueue_many(
    client: redis.asyncio.Redis, items: list[tuple[str, str, dict[str, Any] | None]], max_waiting: int
) -> list[str] | None:
    """Queue ``(kind, name, report)`` items in their order, all or none, in one round trip;
    their ids, or ``None`` when that would leave more than ``max_waiting`` waiting."""
    entries = [orjson.dumps({"kind": kind, "name": name, "report": report}) for kind, name, report in items]
    ids = await client.eval(ENQUEUE, 1, keys.REPORTS_STREAM, max_waiting, *entries)
    return None if ids is None else [entry_id.decode() for entry_id in ids]


class ReportReader:
    """One status worker's end of the stream."""

    def __init__(self, client: redis.Redis, consumer: str, batch_max: int = 10_000) -> None:
        self.client = client
        self.consumer = consumer
        self.batch_max = batch_max

    def read(self) -> list[Entry]:
        """Entries a dead worker left unfinished, then new ones, oldest first; never blocks."""
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
            keys.REPORTS_STREAM, keys.REPORTS_GROUP, self.consumer, CLAIM_IDLE_MS, "0-0", count=self.batch_max
        )[1]
        if claimed:
            log.warning("claimed %d report(s) a stopped status worker left unapplied", len(claimed))
        fresh: list[Any] = self.client.xreadgroup(  # type: ignore[assignment]  # [(stream, [(id, fields)])]
            keys.REPORTS_GROUP, self.consumer, {keys.REPORTS_STREAM: ">"}, count=self.batch_max
        )
        raw = list(claimed) + [item for _, items in fresh for item in items]
        entries = [self.decode(entry_id, fields) for entry_id, fields in raw if fields]
        return sorted(entries, key=lambda entry: stream_order(entry.id))

    @staticmethod
    def decode(entry_id: bytes, fields: dict[bytes, bytes]) -> Entry:
        body = orjson.loads(fields[b"e"])
        return Entry(entry_id.decode(), body["kind"], body["name"], body.get("report"))

    def done(self, entries: list[Entry]) -> None:
        """Acknowledge and delete ``entries``: an update carrying them is stored."""
        if not entries:
            return
        ids = [entry.id for entry in entries]
        with self.client.pipeline(transaction=False) as pipe:
            pipe.xack(keys.REPORTS_STREAM, keys.REPORTS_GROUP, *ids)
            pipe.xdel(keys.REPORTS_STREAM, *ids)
            pipe.execute()
