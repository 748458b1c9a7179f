"""Who is on a socket: the Django session's user, resolved once, at the handshake.

Channels' ``AuthMiddlewareStack`` makes the same lookup, and also wraps every message a socket
sends in ``SessionMiddleware``'s ``send``, which checks before each frame whether the session
changed and must be saved. Our sockets never write the session, and under fan-out that check
was ~30 % of the web processes' py-spy samples (S1, docs/performance.md). This middleware sets
``scope["user"]`` the way Django's own ``get_user`` does and leaves ``send`` alone.
"""

from __future__ import annotations

from importlib import import_module
from types import SimpleNamespace
from typing import Any

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from django.conf import settings
from django.contrib.auth import get_user
from django.http.cookie import parse_cookie


@database_sync_to_async
def user_of_session(session_key: str | None):
    """The user logged in under ``session_key``, or ``AnonymousUser``."""
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return get_user(SimpleNamespace(session=session))


def session_key_of(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            return parse_cookie(value.decode("latin-1")).get(settings.SESSION_COOKIE_NAME)
    return None


class SessionUserMiddleware(BaseMiddleware):
    async def __call__(self, scope, receive, send):
        scope = dict(scope, user=await user_of_session(session_key_of(scope)))
        return await super().__call__(scope, receive, send)
