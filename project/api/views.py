"""The operators' and the orchestrator's side of the API: the status snapshot and readiness."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as redis
from asgiref.sync import sync_to_async
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from .. import heartbeats, orphans, protocol
from .connections import redis_client
from .errors import json_error, methods

WORKER_REPLY_TIMEOUT_S = 2.0


async def ask_status_worker(message_type: str) -> dict[str, Any]:
    """Send ``message_type`` to the status worker and wait for its answer on a private channel."""
    layer = get_channel_layer()
    reply_channel = await layer.new_channel()
    await layer.send(protocol.STATUS_WORKER, {"type": message_type, "reply_channel": reply_channel})
    try:
        return await asyncio.wait_for(layer.receive(reply_channel), WORKER_REPLY_TIMEOUT_S)
    finally:
        orphans.forget(layer, reply_channel)  # a late answer must not be kept for ever


@methods("GET")
async def status(request: HttpRequest) -> HttpResponse:
    """``GET /api/status``: the snapshot a status socket gets on connect."""
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


@methods("GET")
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
