"""The agent report API's body: its checker, shared by the web edge and the status worker.

``POST /api/machines/<name>/report`` with
``{"state": ..., "progress": optional, "software": [{"name", "state", "percent"}, ...],
"seq": optional, "sent_at": optional}``, and ``POST /api/reports`` with a list of
``{"name": ..., "report": {...}}``. Every problem is collected per field
(``software[2].percent``) so that an agent can fix its report in one round trip.

``seq`` (an integer the agent counts up per machine) and ``sent_at`` (the agent's clock) order
a machine's reports: the status worker ignores one older than what it last stored
(``workers/coalesce.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .protocol import (
    INT_FIELD_MAX,
    MACHINE_NAME_RE,
    MACHINE_STATES,
    SENT_AT_MAX_CHARS,
    SOFTWARE_NAME_MAX_CHARS,
    SOFTWARE_PER_REPORT_MAX,
    SOFTWARE_STATES,
    has_nul,
)


@dataclass
class ReportErrors(Exception):
    errors: dict[str, list[str]] = field(default_factory=dict)

    def add(self, where: str, problem: str) -> None:
        self.errors.setdefault(where, []).append(problem)


NAME_RULE = "must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '.', '-', and not '.' or '..'"
SEQ_RULE = f"must be an integer from 0 to {INT_FIELD_MAX}"
SENT_AT_RULE = "must be an RFC 3339 timestamp with its time zone, e.g. 2026-11-28T12:00:00.250Z"
PERCENT_RULE = "must be a number from 0 to 100"
ITEM_FIELDS = {"name", "report"}

# --- The report's shape: what the server checks and what /api/openapi.json publishes -----------

Percent = Annotated[float, Field(ge=0, le=100, strict=True, allow_inf_nan=False)]
MachineName = Annotated[
    str, Field(pattern=rf"^(?!\.{{1,2}}$){MACHINE_NAME_RE.pattern}$", description=NAME_RULE)
]


class Package(BaseModel):
    """One software package being installed on the machine (fields beyond these are ignored, as
    they always were)."""

    model_config = ConfigDict(extra="ignore")

    name: Annotated[str, Field(min_length=1, max_length=SOFTWARE_NAME_MAX_CHARS, pattern=r"\S", strict=True)]
    state: Literal[SOFTWARE_STATES]  # type: ignore[valid-type]  # the tuple's values
    percent: Percent


class Report(BaseModel):
    """``POST /api/machines/<name>/report``'s body (and a batch item's ``report``)."""

    model_config = ConfigDict(extra="forbid")

    state: Literal[MACHINE_STATES]  # type: ignore[valid-type]  # the tuple's values
    progress: Percent | None = Field(
        None, description="Overall progress; without it, the mean of the packages' percents"
    )
    software: list[Package] = Field(default_factory=list, max_length=SOFTWARE_PER_REPORT_MAX)
    seq: Annotated[int, Field(ge=0, le=INT_FIELD_MAX, strict=True)] | None = Field(
        None, description="The agent's own count for this machine: an older one than stored is ignored"
    )
    sent_at: (
        Annotated[
            str, Field(max_length=SENT_AT_MAX_CHARS, strict=True, json_schema_extra={"format": "date-time"})
        ]
        | None
    ) = Field(None, description="When the agent sent it (RFC 3339 with a time zone): an older one is ignored")

    @field_validator("sent_at")
    @classmethod
    def one_spelling(cls, value: str | None) -> str | None:
        """``sent_at`` in one spelling (UTC, microseconds), so that the worker compares like with like."""
        if value is None:
            return None
        try:
            moment = datetime.fromisoformat(value)
        except (ValueError, OverflowError):
            raise ValueError(SENT_AT_RULE) from None
        if moment.tzinfo is None:
            raise ValueError(SENT_AT_RULE)
        return moment.astimezone(UTC).isoformat(timespec="microseconds")


class BatchItem(BaseModel):
    """One machine's report in ``POST /api/reports``."""

    # Python's re: the name's rule refuses '.' and '..' with a look-ahead, which Rust's lacks.
    model_config = ConfigDict(extra="forbid", regex_engine="python-re")

    name: MachineName
    report: Report


# What each field's problem is called, whatever pydantic's own wording (agents match on these).
FIELD_RULES = {
    "state": f"must be one of: {', '.join(MACHINE_STATES)}",
    "software.*.state": f"must be one of: {', '.join(SOFTWARE_STATES)}",
    "software.*.name": f"must be a non-empty string of at most {SOFTWARE_NAME_MAX_CHARS} characters",
    "software.*": "must be an object",
    "seq": SEQ_RULE,
    "sent_at": SENT_AT_RULE,
}


def _where(loc: tuple[int | str, ...]) -> str:
    """``("software", 2, "percent")`` -> ``software[2].percent``, as the errors name fields."""
    where = ""
    for part in loc:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else part)
    return where


def _problem(loc: tuple[int | str, ...]) -> tuple[str, str]:
    where = _where(loc)
    pattern = ".".join("*" if isinstance(part, int) else part for part in loc)
    if pattern in ("progress", "software.*.percent"):
        return where, PERCENT_RULE
    if pattern == "software":
        return where, f"a list of at most {SOFTWARE_PER_REPORT_MAX} packages"
    return where, FIELD_RULES.get(pattern, "is not valid")


def _check_packages_named_once(software: Any, errors: ReportErrors) -> None:
    seen: set[str] = set()
    for index, package in enumerate(software if isinstance(software, list) else []):
        name = package.get("name") if isinstance(package, dict) else None
        if isinstance(name, str) and name in seen:
            errors.add(f"software[{index}].name", "appears twice in this report")
        elif isinstance(name, str):
            seen.add(name)


def check_machine_name(name: str) -> None:
    if not MACHINE_NAME_RE.fullmatch(name) or name in (".", ".."):
        raise ReportErrors({"name": [NAME_RULE]})


def may_hold_nul(raw: bytes) -> bool:
    """Whether JSON text ``raw`` can decode to a string holding a NUL: only through the escape
    ``\\u0000`` (JSON allows no raw control character in a string; orjson refuses one). Where it
    cannot, the walk through every decoded string (:func:`~project.protocol.has_nul`) is skipped."""
    return b"\\u0000" in raw


def check_report(name: str, body: Any, nul_possible: bool = True) -> dict[str, Any]:
    """The normalised report, or :class:`ReportErrors` listing every problem found.
    ``nul_possible=False``: the body's JSON text held no NUL (:func:`may_hold_nul`)."""
    errors = ReportErrors()
    try:
        check_machine_name(name)
    except ReportErrors as invalid:
        errors.errors.update(invalid.errors)
    if not isinstance(body, dict):
        errors.add("body", "must be a JSON object")
        raise errors
    if nul_possible and has_nul(body):
        errors.add("body", "must not contain NUL characters (\\u0000)")
        raise errors
    _check_packages_named_once(body.get("software"), errors)  # JSON Schema cannot say it
    try:
        report = Report.model_validate(body)
    except ValidationError as invalid:
        unknown = []
        for problem in invalid.errors():
            if problem["type"] == "extra_forbidden":
                unknown.append(str(problem["loc"][-1]))
                if len(problem["loc"]) == 1:
                    continue
            where, rule = _problem(problem["loc"])
            if rule not in errors.errors.get(where, []):
                errors.add(where, rule)
        if unknown:
            errors.errors.setdefault("body", []).insert(0, f"unknown field(s): {', '.join(sorted(unknown))}")
        raise errors from None
    if errors.errors:
        raise errors
    # Only given ones travel: a report without them is ordered by its arrival, as before.
    return report.model_dump(exclude_none=True, exclude={"progress"}) | {"progress": report.progress}


def check_batch_item(item: Any, nul_possible: bool = True) -> tuple[str, dict[str, Any]]:
    """``(name, normalised report)`` of one ``{"name": ..., "report": {...}}`` of a batch, or
    :class:`ReportErrors` naming its fields as the single-machine endpoint would."""
    if not isinstance(item, dict):
        raise ReportErrors({"item": ["must be an object with name and report"]})
    errors = ReportErrors()
    unknown = sorted(set(item) - ITEM_FIELDS)
    if unknown:
        errors.add("item", f"unknown field(s): {', '.join(unknown)}")
    given_name = item.get("name")
    name = given_name if isinstance(given_name, str) else ""  # "" is refused by name
    try:
        report = check_report(name, item.get("report"), nul_possible)
    except ReportErrors as invalid:
        # The single endpoint's "body" is this item's "report".
        for where, problems in invalid.errors.items():
            errors.errors["report" if where == "body" else where] = problems
    if errors.errors:
        raise errors
    return name, report
