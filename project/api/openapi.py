"""``GET /api/openapi.json``: the HTTP API as an OpenAPI 3.1 document.

The request bodies' schemas are the pydantic models the server checks reports with
(``project/reports.py``), and the answers' are the models below, so the document cannot drift
from what the server does: ``tests/test_openapi_contract.py`` runs schemathesis against it.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import orjson
from django.http import HttpRequest, HttpResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from .. import protocol
from ..reports import NAME_RULE, BatchItem, Report
from .errors import methods


class ItemError(BaseModel):
    index: int
    name: str | None
    error: str
    errors: dict[str, list[str]]


class Error(BaseModel):
    """Every error: a code to match on, a sentence for people, and per-field problems if any."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="e.g. invalid_report, unauthorized, too_large, server_busy")
    detail: str
    errors: dict[str, list[str]] | list[ItemError] | None = Field(
        None, description="Problems by field (e.g. software[2].percent), or a batch's refused items"
    )


class Accepted(BaseModel):
    status: Literal["accepted"]
    machine: str


class BatchAccepted(BaseModel):
    status: Literal["accepted"]
    accepted: int
    refused: int
    errors: list[ItemError] = Field(description="The refused items, by their index in the batch")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: Literal["ready", "unavailable"]
    failed: list[str]
    checks: dict[str, dict[str, Any]]


class Snapshot(BaseModel):
    """The status snapshot, as a status socket's first frame (docs/protocol.md)."""

    model_config = ConfigDict(extra="allow")

    type: str


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "The request has errors (per field)",
        401: "No valid token or session",
        404: "No such path",
        405: "Method not allowed",
        413: "Body too large",
        503: "Try again shortly",
    }
    return {str(status): _json("Error", meaning[status]) for status in statuses}


@functools.cache
def document() -> dict[str, Any]:
    _, defs = models_json_schema(
        [
            (model, "validation" if model in (Report, BatchItem) else "serialization")
            for model in (
                Report,
                BatchItem,
                Error,
                Accepted,
                ItemError,
                BatchAccepted,
                Health,
                Readiness,
                Snapshot,
            )
        ],
        ref_template="#/components/schemas/{model}",
    )
    schemas = defs["$defs"]
    bearer: list[dict[str, list[str]]] = [{"agentToken": []}]
    machine_name = {
        "name": "name",
        "in": "path",
        "required": True,
        "description": NAME_RULE,
        "schema": schemas["BatchItem"]["properties"]["name"],
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fleetchat HTTP API",
            "version": "1",
            "description": "Agents report machines' progress; operators read the fleet's status. "
            "Every answer is JSON. Sockets are described in docs/protocol.md.",
        },
        "paths": {
            "/api/machines/{name}/report": {
                "post": {
                    "summary": "A machine's progress report",
                    "security": bearer,
                    "parameters": [machine_name],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("Report")}},
                    },
                    "responses": {
                        "202": _json("Accepted", "Queued for the status workers"),
                        **_errors(400, 401, 405, 413, 503),
                    },
                }
            },
            "/api/machines/{name}": {
                "delete": {
                    "summary": "Forget a machine",
                    "security": bearer,
                    "parameters": [machine_name],
                    "responses": {
                        "202": _json("Accepted", "Queued for the status workers"),
                        **_errors(400, 401, 405, 503),
                    },
                }
            },
            "/api/reports": {
                "post": {
                    "summary": "Many machines' reports at once",
                    "description": "Good items are queued; bad ones are named by index (202 if any "
                    "was accepted, 400 if none was).",
                    "security": bearer,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": _ref("BatchItem"),
                                    "minItems": 1,
                                    "maxItems": protocol.REPORT_BATCH_MAX_ITEMS,
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _json("BatchAccepted", "The good items queued, the bad ones named"),
                        **_errors(400, 401, 405, 413, 503),
                    },
                }
            },
            "/api/status": {
                "get": {
                    "summary": "The fleet's status snapshot",
                    "security": [{"session": []}],
                    "responses": {
                        "200": _json("Snapshot", "The snapshot"),
                        **_errors(401, 405, 503),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "The web process is alive",
                    "responses": {"200": _json("Health", "Alive"), **_errors(405)},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "The database, Redis, the workers and the scheduler answer",
                    "responses": {
                        "200": _json("Readiness", "Ready"),
                        "503": _json("Readiness", "Not ready: failed names what"),
                        **_errors(405),
                    },
                }
            },
            "/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
                }
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "agentToken": {"type": "http", "scheme": "bearer", "description": "An agent token"},
                "session": {"type": "apiKey", "in": "cookie", "name": "sessionid"},
            },
        },
    }


@methods("GET")
def openapi(request: HttpRequest) -> HttpResponse:
    return HttpResponse(orjson.dumps(document()), content_type="application/json")
