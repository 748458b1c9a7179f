"""``GET /metrics``: the web processes' metrics (``project/metrics.py``), summed over every
uvicorn process of this master, for Prometheus. Not public: ``project/metrics_http.py``."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import psutil
from django.http import HttpRequest, HttpResponse

# isort: off
from project import metrics  # first: it chooses prometheus_client's mode before it loads
from project.metrics_http import challenge, refusal
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST
# isort: on

from .errors import json_error


def forget_dead_processes(family: Path) -> None:
    """Drop the live gauges (open sockets) of this master's processes that have died; their
    counters stay in the sums, as a counter never goes down."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return
    try:
        alive = {child.pid for child in psutil.Process(parent.pid).children()}
    except psutil.Error:
        return
    for path in family.glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and int(pid) not in alive:
            multiprocess.mark_process_dead(int(pid), str(family))


def registry() -> CollectorRegistry:
    summed = CollectorRegistry()
    if metrics.FAMILY_DIR is None:  # one process (WEB_CONCURRENCY=1): its own numbers
        summed.register(REGISTRY)
    else:
        forget_dead_processes(metrics.FAMILY_DIR)
        multiprocess.MultiProcessCollector(summed, path=str(metrics.FAMILY_DIR))
    summed.register(metrics.QueueCollector())
    return summed


def metrics_view(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        response = json_error(405, "method_not_allowed", "use GET")
        response["Allow"] = "GET"
        return response
    refused = refusal(request.META.get("REMOTE_ADDR", ""), request.headers.get("Authorization", ""))
    if refused is not None:
        status, code, detail = refused
        response = json_error(status, code, detail)
        for name, value in challenge(status).items():
            response[name] = value
        return response
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)
