"""``createoperator``: an ordinary user, who may use the dashboard and chat but not ``/admin/``.

    python manage.py createoperator alice                                  # asks for the password
    OPERATOR_PASSWORD=... python manage.py createoperator alice --noinput  # for scripts

``make user`` runs it. Admins, who can read every room in ``/admin/``, are made by a separate
step (``make admin``: ``createsuperuser``); docs/operations.md "Users".
"""

from __future__ import annotations

import getpass
import os

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

PASSWORD_ENV = "OPERATOR_PASSWORD"


class Command(BaseCommand):
    help = "Create an ordinary user (neither staff nor superuser): dashboard and chat, no /admin/."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username", nargs="?", help="asked for when left out")
        parser.add_argument(
            "--noinput",
            "--no-input",
            action="store_false",
            dest="interactive",
            help=f"never prompt: the username is required and the password comes from ${PASSWORD_ENV}",
        )

    def handle(self, *args, username: str | None, interactive: bool, **options) -> None:
        if not username and interactive:
            username = input("Username: ").strip()
        if not username:
            raise CommandError("give a username")
        password = os.environ.get(PASSWORD_ENV) or (ask_password() if interactive else "")
        if not password:
            raise CommandError(f"set {PASSWORD_ENV}, or leave out --noinput to be asked")

        user_model = get_user_model()
        user = user_model(**{user_model.USERNAME_FIELD: username}, is_staff=False, is_superuser=False)
        try:
            validate_password(password, user)
            user.set_password(password)
            user.full_clean()  # the username's characters, and that nobody has it yet
        except ValidationError as invalid:
            raise CommandError(" ".join(invalid.messages)) from None
        user.save()
        self.stdout.write(f"Created {username}: an ordinary user, not an admin.")


def ask_password() -> str:
    password = getpass.getpass("Password: ")
    if password != getpass.getpass("Password (again): "):
        raise CommandError("the two passwords differ")
    return password
