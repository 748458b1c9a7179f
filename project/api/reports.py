"""The agents' side of the API: reports and removals, checked here and queued for the status workers.

Like the socket consumers, these views own no business logic: a report is checked (so that
the agent hears about its mistakes at once), queued where it outlives any process
(``project/reportqueue.py``) and answered ``202``.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import redis.asyncio as redis
from django.http import HttpRequest, HttpResponse, JsonResponse

from .. import metrics, protocol, reportqueue
from ..reports import ReportErrors, check_machine_name, check_report, may_hold_nul
from .auth import agent_api
from .connections import report_queue
from .errors import body_within, json_error

log = logging.getLogger(__name__)


async def queue_for_status_workers(kind: str, name: str, report: dict[str, Any] | None) -> HttpResponse:
    """Queue a report or a removal where it outlives any process (``project/reportqueue.py``): ``202``."""
    try:
        queued = await report_queue().enqueue(kind, name, report)
    except redis.RedisError as error:
        log.warning("could not queue a %s for %s: %s", kind, name, error)
        return json_error(503, "server_busy", "the report queue is unavailable; retry shortly")
    if queued is None:
        return json_error(503, "server_busy", "the status workers are behind; retry shortly")
    return JsonResponse({"status": "accepted", "machine": name}, status=202)


@metrics.answers_counted
@agent_api("POST")
async def machine_report(request: HttpRequest, name: str) -> HttpResponse:
    """``POST /api/machines/<name>/report``: an agent's progress report."""
    raw = body_within(request, protocol.MAX_REPORT_BYTES)
    if raw is None:
        return json_error(413, "too_large", f"reports are limited to {protocol.MAX_REPORT_BYTES} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json_error(400, "invalid_report", "the report has errors", errors={"body": ["not valid JSON"]})
    try:
        report = check_report(name, body, may_hold_nul(raw))
    except ReportErrors as invalid:
        return json_error(400, "invalid_report", "the report has errors", errors=invalid.errors)
    return await queue_for_status_workers(reportqueue.REPORT, name, report)


@metrics.answers_counted
@agent_api("DELETE")
async def machine(request: HttpRequest, name: str) -> HttpResponse:
    """``DELETE /api/machines/<name>``: forget a machine (it shows in ``removed``)."""
    try:
        check_machine_name(name)
    except ReportErrors as invalid:
        return json_error(400, "invalid_name", "the machine name is not valid", errors=invalid.errors)
    return await queue_for_status_workers(reportqueue.REMOVE, name, None)
