"""Database connections in the web process: none outlives the HTTP request that opened it.

Django keeps a connection per thread, and runs the synchronous part of each HTTP request
(middleware, sessions, login throttling, ``sync_to_async`` in async views) in a thread made for
that request alone (asgiref's ``ThreadSensitiveContext``). With persistent connections
(``DB_CONN_MAX_AGE``) the request's connection stayed open after its thread was gone, until the
garbage collector happened to free it: on PostgreSQL a web process held 21 idle connections after
400 requests, each a server process counted against ``max_connections``. Wrapped in
:class:`ClosingConnections`, the request's own thread closes them as the request ends.

Sockets are not wrapped: their handshakes and session checks run in the process's one shared
thread (``database_sync_to_async``), whose connection persists and is health-checked like a
worker's.
"""

from __future__ import annotations

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import connections


class ClosingConnections:
    """ASGI middleware for Django's HTTP handler."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        # The outermost context decides the thread: Django's handler, inside, uses this one.
        async with ThreadSensitiveContext():
            try:
                await self.app(scope, receive, send)
            finally:
                await sync_to_async(connections.close_all)()
