"""``POST /api/reports``: many machines' reports in one request, for relays and agents that
report for many machines.

Each item is checked as the single-machine endpoint checks its report. The good ones are
queued together, in their order, in one step (all of them or, when the queue is full, none);
a bad one is refused whole and named in ``errors`` by its index. No item is ever half-queued.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import redis.asyncio as redis
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from .. import metrics, protocol, reportqueue
from ..reports import ReportErrors, check_batch_item, may_hold_nul
from .auth import agent_api
from .connections import redis_client
from .errors import body_within, json_error

log = logging.getLogger(__name__)

BATCH_RULE = "must be a JSON list of {name, report} objects"


def check_items(
    items: list[Any], nul_possible: bool = True
) -> tuple[list[tuple[str, str, dict[str, Any] | None]], list[dict[str, Any]]]:
    """The items to queue as ``(kind, name, report)`` and the errors of the others, by index."""
    good: list[tuple[str, str, dict[str, Any] | None]] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            name, report = check_batch_item(item, nul_possible)
        except ReportErrors as invalid:
            given = item.get("name") if isinstance(item, dict) else None
            errors.append(
                {
                    "index": index,
                    "name": given if isinstance(given, str) else None,
                    "error": "invalid_report",
                    "errors": invalid.errors,
                }
            )
        else:
            good.append((reportqueue.REPORT, name, report))
    return good, errors


@metrics.answers_counted
@agent_api("POST")
async def report_batch(request: HttpRequest) -> HttpResponse:
    """``202`` with the count accepted and the errors of items refused (``400`` if all were)."""
    body = body_within(request, protocol.MAX_REPORT_BATCH_BYTES)
    if body is None:
        return json_error(413, "too_large", f"a batch is limited to {protocol.MAX_REPORT_BATCH_BYTES} bytes")
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError:
        return json_error(400, "invalid_batch", "the batch has errors", errors={"body": ["not valid JSON"]})
    if not isinstance(items, list) or not items:
        return json_error(
            400, "invalid_batch", "the batch has errors", errors={"body": [BATCH_RULE + ", not empty"]}
        )
    if len(items) > protocol.REPORT_BATCH_MAX_ITEMS:
        return json_error(413, "too_large", f"a batch is limited to {protocol.REPORT_BATCH_MAX_ITEMS} items")
    good, errors = check_items(items, may_hold_nul(body))
    answer = {"accepted": len(good), "refused": len(errors), "errors": errors}
    if not good:
        return json_error(400, "invalid_report", "every item of the batch has errors", **answer)
    try:
        queued = await reportqueue.enqueue_many(redis_client(), good, settings.REPORTS_QUEUE_MAX)
    except redis.RedisError as error:
        log.warning("could not queue a batch of %d reports: %s", len(good), error)
        return json_error(
            503, "server_busy", "the report queue is unavailable; retry shortly; nothing was queued"
        )
    if queued is None:
        return json_error(
            503, "server_busy", "the status workers are behind; retry shortly; nothing was queued"
        )
    return JsonResponse({"status": "accepted", **answer}, status=202)
