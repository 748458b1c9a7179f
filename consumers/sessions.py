"""Sockets follow their session: when it ends, every socket opened with it closes with 4001.

A socket's user is resolved once, at the handshake (project/socket_auth.py); nothing here
queries per socket or per frame. Each web process keeps its sockets by session key and closes
those of a session that ended, learning of it two ways:

- **a logout**, at once: the logout's web process sends the session's hash to the group
  ``protocol.SESSIONS_GROUP``, which every web process joins once through its fan-out
  (consumers/fanout.py), so a logout costs one message per web process;
- **anything else** (expiry, a password change, a user deactivated or deleted, a session row
  deleted, a lost logout message): every ``SESSION_CHECK_EVERY_S`` the process asks
  :func:`project.socket_auth.ended_sessions` about all the distinct sessions its sockets hold,
  in one batched query in a thread, whatever the number of sockets. The query is the edge's
  authentication's (project/socket_auth.py), as at the handshake: nothing here touches the ORM.

If the database cannot be asked, sockets stay open until it can: a check is a revocation,
and a database outage must not drop every socket.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from project import protocol
from project.socket_auth import ended_sessions, session_hash

from .fanout import fanout_for

log = logging.getLogger(__name__)

ask_ended_sessions = database_sync_to_async(ended_sessions)


class SessionWatch:
    """This process's sockets by the session they were opened with."""

    def __init__(self) -> None:
        self.sockets: dict[str, set] = {}  # session key -> its sockets in this process
        self.keys: dict[str, str] = {}  # session hash -> session key
        self.watcher: asyncio.Task | None = None
        self.watcher_loop: asyncio.AbstractEventLoop | None = None

    def follow(self, consumer) -> None:
        """Close ``consumer`` (with ``consumer.close_ended_session()``) once its session ends."""
        key = consumer.scope.get("session_key")
        if key is None:  # a guest: no session to follow
            return
        self.sockets.setdefault(key, set()).add(consumer)
        self.keys[session_hash(key)] = key
        # One watcher per event loop (a web process has one; tests run a loop per test).
        loop = asyncio.get_running_loop()
        if self.watcher is None or self.watcher.done() or self.watcher_loop is not loop:
            self.watcher = loop.create_task(self.watch_forever())
            self.watcher_loop = loop

    def unfollow(self, consumer) -> None:
        key = consumer.scope.get("session_key")
        followers = self.sockets.get(key)
        if followers is None:
            return
        followers.discard(consumer)
        if not followers:
            self.forget(key)

    def forget(self, key: str) -> set:
        self.keys.pop(session_hash(key), None)
        return self.sockets.pop(key, set())

    def end(self, key: str) -> None:
        """The session ``key`` ended: close its sockets in this process."""
        followers = self.forget(key)
        if followers:
            log.info("closing %d socket(s) of an ended session", len(followers))
        for consumer in followers:
            consumer.close_ended_session()

    async def session_ended(self, message: dict[str, Any]) -> None:
        """A logout on some web process (``protocol.SESSION_END``, through the fan-out)."""
        session = message.get("session")
        key = self.keys.get(session) if isinstance(session, str) else None
        if key is not None:
            self.end(key)

    async def watch_forever(self) -> None:
        """Join the logout group, then check every session this process holds, periodically."""
        joined = False
        while True:
            if not joined:
                joined = await self.join_logouts()
            await asyncio.sleep(settings.SESSION_CHECK_EVERY_S)
            if self.sockets:
                await self.check()

    async def join_logouts(self) -> bool:
        fanout = fanout_for(get_channel_layer(settings.GROUP_LAYER_ALIAS))
        try:
            # Once in, the fan-out keeps the membership through Redis restarts.
            await fanout.join(protocol.SESSIONS_GROUP, self)
            return True
        except Exception as error:
            log.warning(
                "could not join %s (%s); logouts close sockets at the next check",
                protocol.SESSIONS_GROUP,
                error,
            )
            fanout.layer_failed()
            return False

    async def check(self) -> None:
        try:
            ended = await ask_ended_sessions(list(self.sockets))
        except Exception as error:
            log.warning(
                "could not check %d session(s) (%s); keeping their sockets for now", len(self.sockets), error
            )
            return
        for key in ended:
            self.end(key)


sessions = SessionWatch()
