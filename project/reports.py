"""The agent report API's body: its checker, shared by the web edge and the status worker.

``POST /api/machines/<name>/report`` with
``{"state": ..., "progress": optional, "software": [{"name", "state", "percent"}, ...]}``.
Every problem is collected per field (``software[2].percent``) so that an agent can fix
its report in one round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .protocol import (
    MACHINE_NAME_RE,
    MACHINE_STATES,
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
    unknown = sorted(set(body) - {"state", "progress", "software"})
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

    if errors.errors:
        raise errors
    return {"state": state, "progress": progress, "software": packages}
