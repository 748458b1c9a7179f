"""Which agent token a report API request carries: its name, or why it is refused.

Agents send ``Authorization: Bearer <token>``. The valid tokens are the named ones in the
database (``workers.models.AgentToken``: ``manage.py agenttoken`` or ``/admin/``) that are not
revoked, and ``FLEET_TOKEN``, whose name is ``env``. Several are valid at once, which is what
lets a token be rotated without downtime (docs/operations.md, "Agent tokens").

Each web process keeps every token's SHA-256 in memory, revoked ones included (so that a log
line can name a revoked token still in use), and reloads them from the database before judging
a request when its copy is ``RELOAD_EVERY_S`` old: a request is judged against the tokens as
they were at most a second before it arrived, so a revocation refuses its token on every web
process within a second. That costs one small query per process per second while reports
arrive, none while they do not, and nothing per request.

If the database does not answer within ``RELOAD_WAIT_S``, requests are judged against the last
copy (a revocation needs the database too) and the process says so in its log once per attempt.
Until a first copy is loaded, only ``FLEET_TOKEN`` can be checked: any other token is answered
``503 server_busy`` rather than a ``401`` that would tell an agent its good token is wrong.

The presented token's hash is compared with every known hash by ``hmac.compare_digest``, with no
early exit, so the time taken says nothing about which tokens exist or which one matched.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import logging
import time
from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest

from project import metrics
from workers.models import AgentToken

log = logging.getLogger(__name__)

RELOAD_EVERY_S = 1.0
RELOAD_WAIT_S = 1.0
REQUEST_ATTRIBUTE = "agent_token_name"
# A request's outcome, in logs and in the metric fleetchat_agent_token_requests_total.
ACCEPTED, REVOKED, UNKNOWN, MISSING, UNCHECKED = "accepted", "revoked", "unknown", "missing", "unchecked"


@dataclass(frozen=True)
class KnownToken:
    name: str
    digest: str  # SHA-256, hex, as stored
    revoked: bool


@dataclass(frozen=True)
class Verdict:
    """What a request's token is: ``outcome``, and the token's ``name`` if it is one we know
    (accepted or revoked). ``UNCHECKED``: the tokens could not be loaded yet (503, not 401)."""

    outcome: str
    name: str | None = None

    @property
    def accepted(self) -> bool:
        return self.outcome == ACCEPTED

    def __str__(self) -> str:
        return {
            ACCEPTED: f"token {self.name!r}",
            REVOKED: f"revoked token {self.name!r}",
            UNKNOWN: "unknown token",
            MISSING: "no bearer token",
            UNCHECKED: "agent tokens not loaded yet",
        }[self.outcome]


@database_sync_to_async
def load_tokens() -> tuple[KnownToken, ...]:
    return tuple(
        KnownToken(name, digest, revoked_at is not None)
        for name, digest, revoked_at in AgentToken.objects.values_list("name", "digest", "revoked_at")
    )


class TokenBook:
    """This process's copy of the token hashes, reloaded at most once per ``RELOAD_EVERY_S``.
    One per process (``book``): a book's reload belongs to the event loop that started it."""

    def __init__(self) -> None:
        self.stored: tuple[KnownToken, ...] | None = None  # None until a first load succeeds
        self.attempted_at = float("-inf")  # monotonic start of the latest load
        self.reload: asyncio.Task | None = None
        self.used: set[str] = set()  # names this process has accepted, to log each one's first use

    def env_tokens(self) -> tuple[KnownToken, ...]:
        if not settings.FLEET_TOKEN:
            return ()
        return (KnownToken(AgentToken.ENV_NAME, AgentToken.digest_of(settings.FLEET_TOKEN), False),)

    async def current(self) -> tuple[KnownToken, ...] | None:
        """The stored tokens as loaded at most ``RELOAD_EVERY_S`` ago, or the last copy while a
        load takes over ``RELOAD_WAIT_S``; None if no load ever succeeded."""
        loading = self.reload is not None and not self.reload.done()
        if not loading and time.monotonic() - self.attempted_at >= RELOAD_EVERY_S:
            self.attempted_at = time.monotonic()
            # A fresh context: the task must not inherit this request's thread-sensitive
            # context (asgiref), which ends with the request while the load may still run.
            self.reload = asyncio.get_running_loop().create_task(self.load(), context=contextvars.Context())
        wait_s = self.attempted_at + RELOAD_WAIT_S - time.monotonic()
        if self.reload is not None and not self.reload.done() and wait_s > 0:
            await asyncio.wait([self.reload], timeout=wait_s)
        return self.stored

    async def load(self) -> None:
        try:
            self.stored = await load_tokens()
        except DatabaseError as error:
            log.warning(
                "could not reload the agent tokens (%s); judging by %s",
                error,
                "FLEET_TOKEN alone" if self.stored is None else "the last copy",
            )
        took_s = time.monotonic() - self.attempted_at
        if took_s > RELOAD_WAIT_S:
            log.warning(
                "reloading the agent tokens took %.1f s; requests meanwhile were judged by the last copy",
                took_s,
            )

    async def judge(self, token: str) -> Verdict:
        stored = await self.current()
        presented = AgentToken.digest_of(token)
        match = None
        for known in self.env_tokens() + (stored or ()):
            if hmac.compare_digest(presented, known.digest):  # every one, without stopping early
                match = known
        if match is None:
            return Verdict(UNCHECKED if stored is None else UNKNOWN)
        if match.revoked:
            return Verdict(REVOKED, match.name)
        if match.name not in self.used:
            self.used.add(match.name)
            log.info("agent token %r in use (its first accepted request in this process)", match.name)
        return Verdict(ACCEPTED, match.name)


book = TokenBook()


def bearer_token(request: HttpRequest) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def authenticate(request: HttpRequest) -> Verdict:
    """Judge the request's bearer token; an accepted one's name is then :func:`token_name`."""
    token = bearer_token(request)
    verdict = Verdict(MISSING) if token is None else await book.judge(token)
    metrics.agent_token_used(verdict.name or "", verdict.outcome)
    setattr(request, REQUEST_ATTRIBUTE, verdict.name if verdict.accepted else None)
    return verdict


def token_name(request: HttpRequest) -> str | None:
    """The name of the agent token this request was accepted with (for logs and metrics)."""
    return getattr(request, REQUEST_ATTRIBUTE, None)
