"""The username a failed login is counted under (django-axes' ``AXES_USERNAME_CALLABLE``).

Axes stores what the login form was sent, whatever it is, in a 255-character column; a longer
name or one with a NUL in it made PostgreSQL refuse the row and the login answer 500 (SQLite
stores anything). No username is longer than 150 characters (Django's ``User``) or holds a NUL,
so the name is cut to the column and its NULs dropped: a login attempt is still counted.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

USERNAME_FIELD = "username"
STORED_MAX_CHARS = 255  # axes.models.AccessBase.username


def attempted_username(request: HttpRequest, credentials: dict[str, Any] | None) -> str | None:
    name = credentials.get(USERNAME_FIELD) if credentials else request.POST.get(USERNAME_FIELD)
    return None if name is None else str(name).replace("\x00", "")[:STORED_MAX_CHARS]
