"""The socket's user comes from the Django session cookie, resolved once at the handshake."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from project.socket_auth import session_key_of, user_of_session


def test_session_key_is_read_from_the_cookie_header():
    scope = {"headers": [(b"host", b"x"), (b"cookie", b"csrftoken=abc; sessionid=k3y; theme=dark")]}
    assert session_key_of(scope) == "k3y"
    assert session_key_of({"headers": [(b"host", b"x")]}) is None


@pytest.mark.django_db(transaction=True)
async def test_a_logged_in_session_gives_its_user_and_anything_else_anonymous():
    from asgiref.sync import sync_to_async

    def log_in() -> str:
        user = User.objects.create_user("erin", password="pw-erin-123")
        client = Client()
        # force_login: axes' backend needs the request that Client.login does not pass.
        client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
        return client.session.session_key

    session_key = await sync_to_async(log_in)()
    user = await user_of_session(session_key)
    assert user.is_authenticated and user.get_username() == "erin"
    assert not (await user_of_session("not-a-session")).is_authenticated
    assert not (await user_of_session(None)).is_authenticated
