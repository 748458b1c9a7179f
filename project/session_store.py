"""Django's database sessions, where a key no session can have names no session.

A cookie can carry any text, NUL included (``sessionid="\\000…"`` is a quoted value), and
PostgreSQL refuses a NUL in a query: Django's own store then failed the request with 500, and
a socket's handshake too. Here such a key is no session, as it always was on SQLite.
"""

from __future__ import annotations

from django.contrib.sessions.backends import db


class SessionStore(db.SessionStore):
    def __init__(self, session_key: str | None = None) -> None:
        super().__init__(None if session_key is None or "\x00" in session_key else session_key)
