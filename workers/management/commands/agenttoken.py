"""``agenttoken``: the report API's named agent tokens (docs/operations.md, "Agent tokens").

    python manage.py agenttoken create rack-3-2026-06   # prints the token, once, alone on stdout
    python manage.py agenttoken list                    # names, states, dates; never a token
    python manage.py agenttoken revoke rack-3-2026-05   # refused by every web process within 1 s

Only a token's SHA-256 is stored: a token that was not copied when it was created is gone, and
the cure is a new one. ``FLEET_TOKEN`` is the token named ``env``; it is revoked by removing it
from the processes' environment.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from workers.models import AgentToken


class Command(BaseCommand):
    help = "Create, list and revoke the report API's agent tokens."

    def add_arguments(self, parser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        actions.add_parser("create", help="a new token; printed once").add_argument("name")
        actions.add_parser("list", help="every token's name and state")
        actions.add_parser("revoke", help="refuse a token from now on").add_argument("name")

    def handle(self, *args, action: str, **options) -> None:
        getattr(self, action)(**options)

    def create(self, name: str, **options) -> None:
        token = AgentToken(name=name)
        secret = token.issue()
        try:
            token.full_clean()  # the name's characters, not taken, not "env"
        except ValidationError as invalid:
            raise CommandError(" ".join(invalid.messages)) from None
        token.save()
        self.stderr.write(f"Agent token {name!r} created. It is shown this once; only its hash is stored:")
        self.stdout.write(secret)

    def list(self, **options) -> None:
        rows = [("name", "state", "created", "revoked")]
        if settings.FLEET_TOKEN:
            rows.append((AgentToken.ENV_NAME, "active", "FLEET_TOKEN", ""))
        for token in AgentToken.objects.all():
            rows.append(
                (
                    token.name,
                    "active" if token.revoked_at is None else "revoked",
                    f"{token.created_at:%Y-%m-%d %H:%M:%S}Z",
                    "" if token.revoked_at is None else f"{token.revoked_at:%Y-%m-%d %H:%M:%S}Z",
                )
            )
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        for row in rows:
            self.stdout.write(
                "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            )

    def revoke(self, name: str, **options) -> None:
        if name == AgentToken.ENV_NAME:
            raise CommandError("'env' is FLEET_TOKEN: remove it from the environment and restart web")
        token = AgentToken.objects.filter(name=name).first()
        if token is None:
            raise CommandError(f"no agent token is named {name!r} (see: manage.py agenttoken list)")
        if not token.revoke():
            raise CommandError(f"{name!r} was already revoked")
        self.stdout.write(f"Revoked {name!r}: every web process refuses it within a second.")
