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
from typing import Any

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


def _is_number(value: Any) -> bool:
    # bool is an int in Python; on the wire it is not a number.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _check_percent(value: Any, where: str, errors: ReportErrors) -> float | None:
    if not _is_number(value):
        errors.add(where, "must be a number")
    elif not 0 <= value <= 100:
        errors.add(where, "must be between 0 and 100")
    else:
        return float(value)
    return None


NAME_RULE = "must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '.', '-'"
SEQ_RULE = f"must be an integer from 0 to {INT_FIELD_MAX}"
SENT_AT_RULE = "must be an RFC 3339 timestamp with its time zone, e.g. 2026-11-28T12:00:00.250Z"
REPORT_FIELDS = {"state", "progress", "software", "seq", "sent_at"}
ITEM_FIELDS = {"name", "report"}


def _check_seq(value: Any, errors: ReportErrors) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT_FIELD_MAX:
        return value
    errors.add("seq", SEQ_RULE)
    return None


def _check_sent_at(value: Any, errors: ReportErrors) -> str | None:
    """``sent_at`` in one spelling (UTC, microseconds), so that the worker compares like with like."""
    if isinstance(value, str) and len(value) <= SENT_AT_MAX_CHARS:
        try:
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is not None:
                return moment.astimezone(UTC).isoformat(timespec="microseconds")
        except (ValueError, OverflowError):
            pass
    errors.add("sent_at", SENT_AT_RULE)
    return None


def check_machine_name(name: str) -> None:
    if not MACHINE_NAME_RE.fullmatch(name):
        raise ReportErrors({"name": [NAME_RULE]})


def check_report(name: str, body: Any) -> dict[str, Any]:
    """The normalised report, or :class:`ReportErrors` listing every problem found."""
    errors = ReportErrors()
    if not MACHINE_NAME_RE.fullmatch(name):
        errors.add("name", NAME_RULE)
    if not isinstance(body, dict):
        errors.add("body", "must be a JSON object")
        raise errors
    if has_nul(body):
        errors.add("body", "must not contain NUL characters (\\u0000)")
        raise errors
    unknown = sorted(set(body) - REPORT_FIELDS)
    if unknown:
        errors.add("body", f"unknown field(s): {', '.join(unknown)}")

    state = body.get("state")
    if state not in MACHINE_STATES:
        errors.add("state", f"must be one of: {', '.join(MACHINE_STATES)}")
    progress = None
    if body.get("progress") is not None:
        progress = _check_percent(body["progress"], "progress", errors)

    software = body.get("software", [])
    packages: list[dict[str, Any]] = []
    if not isinstance(software, list):
        errors.add("software", "must be a list")
    elif len(software) > SOFTWARE_PER_REPORT_MAX:
        errors.add("software", f"at most {SOFTWARE_PER_REPORT_MAX} entries")
    else:
        seen: set[str] = set()
        for index, entry in enumerate(software):
            where = f"software[{index}]"
            if not isinstance(entry, dict):
                errors.add(where, "must be an object")
                continue
            package_name = entry.get("name")
            if not isinstance(package_name, str) or not package_name.strip():
                errors.add(f"{where}.name", "must be a non-empty string")
            elif len(package_name) > SOFTWARE_NAME_MAX_CHARS:
                errors.add(f"{where}.name", f"at most {SOFTWARE_NAME_MAX_CHARS} characters")
            elif package_name in seen:
                errors.add(f"{where}.name", "appears twice in this report")
            else:
                seen.add(package_name)
            if entry.get("state") not in SOFTWARE_STATES:
                errors.add(f"{where}.state", f"must be one of: {', '.join(SOFTWARE_STATES)}")
            percent = _check_percent(entry.get("percent"), f"{where}.percent", errors)
            packages.append({"name": package_name, "state": entry.get("state"), "percent": percent})

    # Only given ones travel: a report without them is ordered by its arrival, as before.
    order: dict[str, Any] = {}
    if body.get("seq") is not None:
        order["seq"] = _check_seq(body["seq"], errors)
    if body.get("sent_at") is not None:
        order["sent_at"] = _check_sent_at(body["sent_at"], errors)

    if errors.errors:
        raise errors
    return {"state": state, "progress": progress, "software": packages, **order}


def check_batch_item(item: Any) -> tuple[str, dict[str, Any]]:
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
        report = check_report(name, item.get("report"))
    except ReportErrors as invalid:
        # The single endpoint's "body" is this item's "report".
        for where, problems in invalid.errors.items():
            errors.errors["report" if where == "body" else where] = problems
    if errors.errors:
        raise errors
    return name, report
