"""Every Prometheus metric of the service, defined once (docs/operations.md, "Metrics").

Instrumented code makes one call per event: ``metrics.handshake(kind, outcome)``, or, per
frame written to a socket, ``inc()`` on a :class:`Tally` bound once per socket
(``consumers/outbox.py``). Nothing here waits on I/O or takes a lock on a hot path.

Where the numbers live:

- **web** runs as several uvicorn processes (``--workers``) behind one port, and a scrape
  reaches one of them. So each writes its metrics to memory-mapped files (prometheus_client's
  multiprocess mode) in a directory shared with its siblings, and ``/metrics`` sums them all.
  The directory belongs to the uvicorn master that started them:
  ``$PROMETHEUS_MULTIPROC_DIR/web-<master pid>-<master start ms>``. A new master gets a new,
  empty one; directories of masters that are gone are removed by the first process of the next;
  a dead process's gauges are dropped at scrape time (``project/api/metrics.py``).
- **worker** and **scheduler** are one process each and keep theirs in memory; each serves them
  on ``METRICS_PORT`` (``project/metrics_http.py``).

The mode must be chosen before prometheus_client is first imported (it reads
``PROMETHEUS_MULTIPROC_DIR`` then), hence the set-up above the import.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import psutil
from django.conf import settings


def start_ms(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).create_time() * 1000)
    except psutil.Error:
        return None


def remove_stale_families(base: Path) -> None:
    """Remove the directories of uvicorn masters that are no longer running."""
    for family in base.glob("web-*-*"):
        _, pid, started = family.name.split("-", 2)
        if pid.isdigit() and started.isdigit() and start_ms(int(pid)) != int(started):
            shutil.rmtree(family, ignore_errors=True)


def family_dir() -> Path | None:
    """The directory this process shares with its siblings, or ``None`` for a process on its own.

    uvicorn's ``--workers`` starts its processes with ``multiprocessing``; any other process
    here (runworker, runscheduler, manage.py, tests, uvicorn with one worker) has no such parent.
    """
    parent = multiprocessing.parent_process()
    parent_pid = None if parent is None else parent.pid
    started = None if parent_pid is None else start_ms(parent_pid)
    if started is None:
        return None
    base = Path(settings.PROMETHEUS_MULTIPROC_DIR)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    remove_stale_families(base)
    family = base / f"web-{parent_pid}-{started}"
    family.mkdir(exist_ok=True)
    return family


FAMILY_DIR = family_dir()
if FAMILY_DIR is None:
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # an operator's, meant for web only
else:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(FAMILY_DIR)

import redis  # noqa: E402
from prometheus_client import Counter, Gauge, Histogram  # noqa: E402  (after the mode is set)
from prometheus_client.core import GaugeMetricFamily  # noqa: E402

from . import keys, protocol, redis_connections  # noqa: E402

log = logging.getLogger(__name__)

# --- web: sockets and frames -------------------------------------------------------------------

sockets_open = Gauge(
    "fleetchat_sockets_open",
    "WebSockets open now, by kind (chat, status)",
    ["kind"],
    multiprocess_mode="livesum",
)
frames_delivered = Counter("fleetchat_frames_delivered", "Frames written to a socket, by kind", ["kind"])
frames_dropped = Counter(
    "fleetchat_frames_dropped",
    "Frames dropped from a socket's outgoing queue before they were written",
    ["kind"],
)
slow_client_resyncs = Counter(
    "fleetchat_slow_client_resyncs", "Status sockets that fell a whole queue behind and were resynced"
)
slow_client_closes = Counter(
    "fleetchat_slow_client_closes", "Sockets that fell a whole queue behind and were closed (4008)", ["kind"]
)
handshakes = Counter(
    "fleetchat_handshakes",
    "WebSocket handshakes by kind and outcome (accepted, or why refused)",
    ["kind", "outcome"],
)
ACCEPTED = "accepted"
UNAUTHENTICATED = "unauthenticated"
LAYER_UNAVAILABLE = "layer_unavailable"  # could not join the group: Redis away
WORKER_UNAVAILABLE = "worker_unavailable"  # could not ask the worker for the first frame
ERROR = "error"  # the connect handler raised
NO_ROUTE = "no_route"  # a path no consumer serves
BAD_ORIGIN = "bad_origin"  # Host or Origin not this site's (project/socket_origin.py), before routing
# and protocol.TOO_MANY_SOCKETS, protocol.TOO_MANY_JOINS (4029)


# Every kind shows from the start (at 0), so that rate() and the dashboards have a series to read.
for kind in protocol.WORKER_CHANNELS:
    for metric in (sockets_open, frames_delivered, frames_dropped, slow_client_closes):
        metric.labels(kind)
    handshakes.labels(kind, ACCEPTED)


class Tally:
    """A counter child for the hottest path, a frame written to a socket. A counter's ``inc()``
    in web (multiprocess mode) takes prometheus_client's lock and writes a memory-mapped file,
    which cost ~2.8 µs a frame (bench/metrics_cost.py; docs/performance.md). A tally adds to a
    plain int and hands the sum to the counter once per ``every_s``, from the event loop that
    counts: a scrape sees a frame at most that much later."""

    def __init__(self, child, every_s: float = 1.0) -> None:
        self.child = child
        self.every_s = every_s
        self.pending = 0
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop a flush is due on

    def inc(self) -> None:
        self.pending += 1
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # none due yet (or due on a loop that has since closed)
            self.loop = loop
            loop.call_later(self.every_s, self.flush)

    def flush(self) -> None:
        self.loop = None
        pending, self.pending = self.pending, 0
        self.child.inc(pending)


delivered_tallies: dict[str, Tally] = {}


def frames_delivered_tally(kind: str) -> Tally:
    """The one tally of this process for frames delivered to ``kind`` sockets."""
    tally = delivered_tallies.get(kind)
    if tally is None:
        tally = delivered_tallies[kind] = Tally(frames_delivered.labels(kind))
    return tally


def handshake(kind: str, outcome: str) -> None:
    handshakes.labels(kind, outcome).inc()


def socket_opened(kind: str) -> None:
    sockets_open.labels(kind).inc()


def socket_closed(kind: str) -> None:
    sockets_open.labels(kind).dec()


# --- web: the report API -----------------------------------------------------------------------

api_answers = Counter(
    "fleetchat_api_reports",
    "Agent API answers by view (machine_report, report_batch, machine) and status code",
    ["endpoint", "code"],
)
for endpoint in ("machine_report", "report_batch", "machine"):
    api_answers.labels(endpoint, "202")


def answers_counted(view):
    """Decorates an async API view: every answer counted by the view's name and status code."""

    @functools.wraps(view)
    async def counted(request, *args, **kwargs):
        try:
            response = await view(request, *args, **kwargs)
        except Exception:
            api_answers.labels(view.__name__, "500").inc()
            raise
        api_answers.labels(view.__name__, str(response.status_code)).inc()
        return response

    return counted


agent_token_requests = Counter(
    "fleetchat_agent_token_requests",
    "Agent API requests by agent token (its name; '' for none or an unknown one) and outcome "
    "(accepted, revoked, unknown, missing, unchecked)",
    ["token", "outcome"],
)
# Refusals from 0 (project/api/tokens.py UNKNOWN, MISSING), for alerts on their rate; a token's
# own series start at its first request.
for outcome in ("unknown", "missing"):
    agent_token_requests.labels("", outcome)


def agent_token_used(token: str, outcome: str) -> None:
    """One agent API request judged (project/api/tokens.py). Names are the operator's, a few."""
    agent_token_requests.labels(token, outcome).inc()


# --- worker ----------------------------------------------------------------------------------

worker_messages = Counter(
    "fleetchat_worker_messages",
    "Messages handled by a worker, by type and outcome (ok, error)",
    ["type", "outcome"],
)
handler_seconds = Histogram(
    "fleetchat_worker_handler_seconds",
    "Time a worker took to handle a message, by type",
    ["type"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
redis_rtt_seconds = Histogram(
    "fleetchat_redis_rtt_seconds",
    "Redis round trip (a PING from the status worker, once per tick)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
)


def worker_handled(message_type: str, started: float, failed: bool) -> None:
    """A worker finished a message it began at ``started`` (``time.perf_counter()``)."""
    handler_seconds.labels(message_type).observe(time.perf_counter() - started)
    worker_messages.labels(message_type, "error" if failed else "ok").inc()


# --- scheduler -------------------------------------------------------------------------------

tick_lag_seconds = Histogram(
    "fleetchat_tick_lag_seconds",
    "How late the leading scheduler sent each tick after its second boundary",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)


def tick_sent_late(tick_ns: int) -> None:
    tick_lag_seconds.observe((time.time_ns() - tick_ns) / 1e9)


# --- read when scraped ------------------------------------------------------------------------


class LeaseCollector:
    """The scheduler's lease as this scheduler sees it (registered by runscheduler)."""

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler

    def describe(self) -> list:
        return []

    def collect(self):
        lease = getattr(self.scheduler, "lease", None)  # made once the scheduler serves
        leads = lease is not None and self.scheduler.leads()
        yield GaugeMetricFamily(
            "fleetchat_scheduler_leader",
            "1 while this scheduler holds the clock's lease, else 0",
            value=int(leads),
        )
        yield GaugeMetricFamily(
            "fleetchat_scheduler_fencing_token",
            "The fencing token of the lease this scheduler holds (0: standing by)",
            value=(lease.token or 0) if lease is not None and leads else 0,
        )


class QueueCollector:
    """What waits in Redis for the workers, read on each scrape of web's ``/metrics`` (the
    producers' side, up while every worker is down): the worker channels' queues in the channel
    layer and the reports stream."""

    def describe(self) -> list:
        return []

    def collect(self):
        prefix = settings.CHANNEL_LAYER_PREFIX
        client = redis_connections.sync_client(socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            with client.pipeline(transaction=False) as pipe:
                for channel in protocol.WORKER_CHANNELS:
                    pipe.zcard(prefix + channel)  # channels_redis keeps a channel's queue in a sorted set
                pipe.xlen(keys.REPORTS_STREAM)
                pipe.get(keys.REPORTS_WAITING)  # reports, where the stream holds up to 100 per entry
                *depths, entries, waiting = pipe.execute()
            reports = int(waiting or 0) if entries else 0
        except redis.RedisError as error:
            log.warning("metrics: could not read the queues' depths (%s)", error)
            return
        finally:
            client.close()
        channels = GaugeMetricFamily(
            "fleetchat_channel_queue_messages",
            "Messages waiting in a worker channel of the channel layer",
            labels=["channel"],
        )
        for channel, depth in zip(protocol.WORKER_CHANNELS, depths, strict=True):
            channels.add_metric([channel], depth)
        yield channels
        yield GaugeMetricFamily(
            "fleetchat_reports_queue_messages",
            "Agent reports queued (answered 202) and not yet applied",
            value=reports,
        )
