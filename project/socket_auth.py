"""Who is on a socket: the Django session's user, resolved once, at the handshake.

Channels' ``AuthMiddlewareStack`` makes the same lookup, and also wraps every message a socket
sends in ``SessionMiddleware``'s ``send``, which checks before each frame whether the session
changed and must be saved. Our sockets never write the session, and under fan-out that check
was ~30 % of the web processes' py-spy samples (S1, docs/performance.md). This middleware sets
``scope["user"]`` the way Django's own ``get_user`` does and leaves ``send`` alone.

A socket then follows its session (consumers/sessions.py): ``scope["session_key"]`` names it,
:func:`ended_sessions` re-checks a web process's sessions in one batch, and a logout tells every
web process at once (:func:`announce_logout`). Channel-layer messages name a session by
:func:`session_hash`, never by its key.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Collection
from importlib import import_module
from types import SimpleNamespace
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.middleware import BaseMiddleware
from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user,
    get_user_model,
    load_backend,
)
from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver
from django.http.cookie import parse_cookie
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from . import protocol

log = logging.getLogger(__name__)


@database_sync_to_async
def user_of_session(session_key: str | None):
    """The user logged in under ``session_key``, or ``AnonymousUser``."""
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return get_user(SimpleNamespace(session=session))  # type: ignore[arg-type]  # it reads only .session


def session_key_of(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            return parse_cookie(value.decode("latin-1")).get(settings.SESSION_COOKIE_NAME)
    return None


class SessionUserMiddleware(BaseMiddleware):
    async def __call__(self, scope, receive, send):
        session_key = session_key_of(scope)
        user = await user_of_session(session_key)
        # The session a logged-in socket follows; guests follow none.
        scope = dict(scope, user=user, session_key=session_key if user.is_authenticated else None)
        return await super().__call__(scope, receive, send)


def session_hash(session_key: str) -> str:
    """How a session is named outside this process (channel-layer messages): never its key."""
    return hashlib.sha256(session_key.encode()).hexdigest()


def ended_sessions(session_keys: Collection[str]) -> set[str]:
    """Which of ``session_keys`` no longer log anyone in: gone (logout, ``clearsessions``),
    expired, or whose user is gone, inactive, or changed password since (the session's auth
    hash no longer matches, exactly as ``django.contrib.auth.get_user`` checks it).

    One query for the sessions and one for their users, whatever their number (Django splits
    an ``in_bulk`` only past the database's limit on parameters, 999 on SQLite). Needs a
    database-backed ``SESSION_ENGINE`` (``db``, the default, or ``cached_db``).
    """
    store = import_module(settings.SESSION_ENGINE).SessionStore
    live = store.get_model_class().objects.filter(expire_date__gt=timezone.now()).only("session_data")
    claims = {key: claimed_login(row.session_data) for key, row in live.in_bulk(list(session_keys)).items()}
    users = get_user_model()._default_manager.in_bulk({claim[0] for claim in claims.values() if claim})
    # A user's sessions make the same claim (the hash is the password's): judge each claim once.
    verdict = functools.cache(lambda claim: claim is not None and logs_in(claim, users))
    return {key for key in session_keys if not verdict(claims.get(key))}


@functools.lru_cache(maxsize=50_000)
def claimed_login(session_data: str) -> tuple[Any, str, str] | None:
    """``(user id, auth backend, auth hash)`` that a session's stored data claims, if any.

    Decoding (an HMAC and JSON) was half the time of a check; a session's data rarely changes,
    so each is decoded once while it is among the last 50,000 seen."""
    claim = import_module(settings.SESSION_ENGINE).SessionStore().decode(session_data)
    if SESSION_KEY not in claim:
        return None
    user_id = get_user_model()._meta.pk.to_python(claim[SESSION_KEY])
    return user_id, claim.get(BACKEND_SESSION_KEY), claim.get(HASH_SESSION_KEY)


def logs_in(claim: tuple[Any, str, str], users: dict[Any, Any]) -> bool:
    """Whether a session's claim still gives its user, as ``get_user`` decides it."""
    user_id, backend_path, claimed_hash = claim
    user = users.get(user_id)
    if user is None or not claimed_hash or backend_path not in settings.AUTHENTICATION_BACKENDS:
        return False
    if not getattr(load_backend(backend_path), "user_can_authenticate", lambda user: True)(user):
        return False
    return any(
        constant_time_compare(claimed_hash, auth_hash)
        for auth_hash in (user.get_session_auth_hash(), *user.get_session_auth_fallback_hash())
    )


@receiver(user_logged_out, dispatch_uid="fleetchat.socket_auth.announce_logout")
async def announce_logout(sender, request, **kwargs) -> None:
    """A logout closes its session's sockets on every web process now, not at their next check.

    Connected when this module is imported, which ``project/asgi.py`` does in every web process
    (the only processes that serve logouts)."""
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if session_key is None:
        return
    message = {"type": protocol.SESSION_END, "session": session_hash(session_key)}
    try:
        await get_channel_layer(settings.GROUP_LAYER_ALIAS).group_send(protocol.SESSIONS_GROUP, message)
    except Exception as error:  # Redis away: every process's next check closes them instead
        log.warning("could not announce a logout to the web processes (%s)", error)
