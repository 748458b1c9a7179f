"""Persistent state owned by the workers."""

import hashlib
import secrets

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from project.protocol import iso_utc


class Room(models.Model):
    """A chat room's position: the offset of its newest message, given out one at a time."""

    name = models.CharField(max_length=64, unique=True)
    last_offset = models.PositiveBigIntegerField(default=0)
    last_message_at = models.DateTimeField(null=True, blank=True, db_index=True)

    def __str__(self) -> str:
        return f"{self.name} @ {self.last_offset}"


class Message(models.Model):
    """One chat message. Its offset (1, 2, 3… per room) orders the room and is what clients
    resume from; its id is global and kept for clients that resume by id."""

    room = models.CharField(max_length=64)
    offset = models.PositiveBigIntegerField()
    author = models.CharField(max_length=150, help_text="Display name at the time of sending.")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    body = models.TextField()
    client_id = models.CharField(max_length=64, null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["room", "id"], name="message_room_id"),
            models.Index(fields=["room", "author", "created"], name="message_rate_window"),
        ]
        constraints = [
            # What makes a resend idempotent: one stored message per client_id,
            # per author, per room.
            models.UniqueConstraint(
                fields=["room", "author", "client_id"],
                condition=Q(client_id__isnull=False),
                name="message_client_id_once",
            ),
            # Offsets are contiguous per room: two workers can never give out the same one.
            models.UniqueConstraint(fields=["room", "offset"], name="message_room_offset_once"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.author} in {self.room}"

    def payload(self) -> dict:
        """The message as clients see it (``chat.message`` without its ``type``)."""
        return {
            "room": self.room,
            "offset": self.offset,
            "id": self.pk,
            "user": self.author,
            "message": self.body,
            "ts": iso_utc(self.created),
            "client_id": self.client_id,
        }


class Machine(models.Model):
    """A machine being provisioned, as its agent last reported it."""

    class State(models.TextChoices):
        PENDING = "pending"
        PROVISIONING = "provisioning"
        READY = "ready"
        FAILED = "failed"
        OFFLINE = "offline"

    name = models.CharField(max_length=64, unique=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    progress = models.FloatField(default=0, help_text="Overall progress, 0-100.")
    last_report = models.DateTimeField(null=True, blank=True)
    report_id = models.CharField(
        max_length=40,
        blank=True,
        default="",
        editable=False,
        help_text="Reports-stream id of the last report handled; older ones are not handled again.",
    )
    # The agent's own order (docs/protocol.md): a report with a lower seq or an earlier sent_at
    # than these is late, counted in late_reports and never applied.
    agent_seq = models.BigIntegerField(
        null=True, blank=True, editable=False, help_text="Highest seq the agent reported (its own counter)."
    )
    agent_sent_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="Latest sent_at the agent reported (its own clock)."
    )
    late_reports = models.PositiveBigIntegerField(
        default=0, editable=False, help_text="Reports ignored because they were older than one stored."
    )

    class Meta:
        indexes = [models.Index(fields=["state", "last_report"], name="machine_state_last_report")]
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RemovedMachine(models.Model):
    """A machine forgotten through the API, remembered for a while by the removal's stream id,
    so that an older report delivered again after a worker crash does not bring it back."""

    name = models.CharField(max_length=64, unique=True)
    report_id = models.CharField(max_length=40)
    removed_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.name} (removed)"


class Software(models.Model):
    """One package being installed on a machine."""

    class State(models.TextChoices):
        QUEUED = "queued"
        INSTALLING = "installing"
        DONE = "done"
        FAILED = "failed"

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="software")
    name = models.CharField(max_length=100)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    percent = models.FloatField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["machine", "name"], name="software_once_per_machine")]
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.machine.name}/{self.name}"


class AgentToken(models.Model):
    """A named bearer token for the report API (docs/protocol.md, "Agent tokens").

    Only the SHA-256 of the token is stored. A token is 256 random bits, so its hash cannot be
    reversed or guessed, and a slow password hash (PBKDF2, argon2) would add nothing but a cost
    paid on every report: those slow down the guessing of low-entropy passwords. A revoked
    token is kept, so that logs can name it when it is still used and its name stays taken.
    """

    # The report API's name for FLEET_TOKEN, which is never stored here.
    ENV_NAME = "env"
    # The secret of a token the admin has just issued, shown once on the next page; never stored.
    secret_once: str | None = None

    name = models.CharField(
        max_length=64,
        unique=True,
        validators=[
            RegexValidator(
                r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z",
                "a token's name is 1-64 letters, digits, '_', '.' or '-'",
            )
        ],
        help_text="Shown in logs and metrics: say who holds it and since when, e.g. rack-3-2026-06.",
    )
    digest = models.CharField(
        max_length=64, unique=True, editable=False, help_text="SHA-256 of the token, hex."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(name="env"),
                name="agent_token_name_is_not_env",
                violation_error_message="'env' is FLEET_TOKEN's name: choose another.",
            ),
        ]

    def __str__(self) -> str:
        return self.name if self.revoked_at is None else f"{self.name} (revoked)"

    @staticmethod
    def digest_of(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def issue(self) -> str:
        """Give this (unsaved) token its secret; the secret, which is never stored."""
        token = secrets.token_urlsafe(32)
        self.digest = self.digest_of(token)
        return token

    def revoke(self) -> bool:
        """Revoke it (the report API refuses it within a second); False if it already was."""
        return AgentToken.objects.filter(pk=self.pk, revoked_at=None).update(revoked_at=timezone.now()) == 1
