"""The HTTP API: agent reports, the status snapshot, and the readiness probe.

Like the socket consumers, these views own no business logic: a report is checked
(so that the agent hears about its mistakes at once), handed to the status worker
with ``channel_layer.send``, and answered ``202``. Every answer is JSON.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
from typing import Any

import orjson
import redis.asyncio as redis
from asgiref.sync import sync_to_async
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from . import heartbeats, orphans, protocol, redis_connections, reportqueue
from .reports import ReportErrors, check_machine_name, check_report

log = logging.getLogger(__name__)

WORKER_REPLY_TIMEOUT_S = 2.0
_redis: redis.Redis | None = None


def json_error(status: int, code: str, detail: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail, **extra}, status=status)


def redis_client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis_connections.async_client(socket_timeout=1, socket_connect_timeout=1)
    return _redis


def bearer_token_ok(request: HttpRequest) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not settings.FLEET_TOKEN:
        return False
    return hmac.compare_digest(token.strip().encode(), settings.FLEET_TOKEN.encode())


def agent_api(*methods: str):
    """Allow only ``methods``, and only to callers holding ``FLEET_TOKEN``."""

    def decorate(view):
        @csrf_exempt
        @functools.wraps(view)
        async def guarded(request: HttpRequest, name: str) -> HttpResponse:
            if request.method not in methods:
                response = json_error(405, "method_not_allowed", f"use {', '.join(methods)}")
                response["Allow"] = ", ".join(methods)
                return response
            if not bearer_token_ok(request):
                response = json_error(401, "unauthorized", "send 'Authorization: Bearer <FLEET_TOKEN>'")
                response["WWW-Authenticate"] = 'Bearer realm="fleet"'
                return response
            return await view(request, name)

        return guarded

    return decorate


async def queue_for_status_workers(kind: str, name: str, report: dict[str, Any] | None) -> HttpResponse:
    """Queue a report or a removal where it outlives any process (``project/reportqueue.py``): ``202``."""
    try:
        queued = await reportqueue.enqueue(redis_client(), kind, name, report, settings.REPORTS_QUEUE_MAX)
    except redis.RedisError as error:
        log.warning("could not queue a %s for %s: %s", kind, name, error)
        return json_error(503, "server_busy", "the report queue is unavailable; retry shortly")
    if queued is None:
        return json_error(503, "server_busy", "the status workers are behind; retry shortly")
    return JsonResponse({"status": "accepted", "machine": name}, status=202)


@agent_api("POST")
async def machine_report(request: HttpRequest, name: str) -> HttpResponse:
    """``POST /api/machines/<name>/report``: an agent's progress report."""
    declared = request.headers.get("Content-Length", "0")
    if (declared.isdigit() and int(declared) > protocol.MAX_REPORT_BYTES) or len(request.body) > protocol.MAX_REPORT_BYTES:
        return json_error(413, "too_large", f"reports are limited to {protocol.MAX_REPORT_BYTES} bytes")
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        return json_error(400, "invalid_report", "the report has errors", errors={"body": ["not valid JSON"]})
    try:
        report = check_report(name, body)
    except ReportErrors as invalid:
        return json_error(400, "invalid_report", "the report has errors", errors=invalid.errors)
    return await queue_for_status_workers(reportqueue.REPORT, name, report)


@agent_api("DELETE")
async def machine(request: HttpRequest, name: str) -> HttpResponse:
    """``DELETE /api/machines/<name>``: forget a machine (it shows in ``removed``)."""
    try:
        check_machine_name(name)
    except ReportErrors as invalid:
        return json_error(400, "invalid_name", "the machine name is not valid", errors=invalid.errors)
    return await queue_for_status_workers(reportqueue.REMOVE, name, None)


async def ask_status_worker(message_type: str) -> dict[str, Any]:
    """Send ``message_type`` to the status worker and wait for its answer on a private channel."""
    layer = get_channel_layer()
    reply_channel = await layer.new_channel()
    await layer.send(protocol.STATUS_WORKER, {"type": message_type, "reply_channel": reply_channel})
    try:
        return await asyncio.wait_for(layer.receive(reply_channel), WORKER_REPLY_TIMEOUT_S)
    finally:
        orphans.forget(layer, reply_channel)  # a late answer must not be kept for ever


async def status(request: HttpRequest) -> HttpResponse:
    """``GET /api/status``: the snapshot a status socket gets on connect."""
    if request.method != "GET":
        return json_error(405, "method_not_allowed", "use GET")
    user = await request.auser()
    if not user.is_authenticated:
        return json_error(401, "unauthorized", "log in first")
    try:
        snapshot = await ask_status_worker(protocol.STATUS_JOIN)
    except (TimeoutError, ChannelFull):
        return json_error(503, "worker_unavailable", "the status worker did not answer")
    return HttpResponse(snapshot["text"], content_type="application/json")


def _database_ok() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def readyz(request: HttpRequest) -> HttpResponse:
    """``GET /readyz``: 200 when the database, Redis, the worker and the scheduler all answer."""
    checks: dict[str, dict[str, Any]] = {}

    try:
        await sync_to_async(_database_ok)()
        checks["database"] = {"ok": True}
    except Exception as error:  # any driver error means not ready
        checks["database"] = {"ok": False, "detail": type(error).__name__}

    scheduler_raw = None
    topology: dict[str, Any] = {"leader": None, "token": None, "schedulers": None, "status_workers": None}
    try:
        async with redis_client().pipeline(transaction=False) as pipe:
            pipe.get(heartbeats.key(heartbeats.SCHEDULER))
            heartbeats.queue_topology(pipe)
            scheduler_raw, *rest = await pipe.execute()
        topology = heartbeats.topology(rest)
        checks["redis"] = {"ok": True}
    except redis.RedisError as error:
        checks["redis"] = {"ok": False, "detail": type(error).__name__}

    age_s = heartbeats.age_s(scheduler_raw)
    fresh = age_s is not None and age_s <= settings.SCHEDULER_STALE_AFTER_S
    checks["scheduler"] = {
        "ok": fresh,
        "heartbeat_age_s": None if age_s is None else round(age_s, 3),
        "leader": topology["leader"],
        "fencing_token": topology["token"],
        "instances": topology["schedulers"],
    }

    if checks["redis"]["ok"]:
        try:
            pong = await ask_status_worker(protocol.HEALTH_PING)
            checks["worker"] = {"ok": True, "answered_by": pong.get("worker")}
        except (TimeoutError, ChannelFull):
            checks["worker"] = {"ok": False, "detail": "did not answer a ping"}
        checks["worker"]["status_instances"] = topology["status_workers"]
    else:
        checks["worker"] = {"ok": False, "detail": "unreachable without Redis"}

    failed = [name for name, check in checks.items() if not check["ok"]]
    return JsonResponse(
        {"status": "unavailable" if failed else "ready", "failed": failed, "checks": checks},
        status=503 if failed else 200,
    )
