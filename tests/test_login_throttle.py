"""Login throttling (django-axes) and ordinary users, over the real processes.

Each test speaks from its own client address, as the front proxy would forward it: uvicorn
(``--proxy-headers``) trusts ``X-Forwarded-For`` from 127.0.0.1 and Django sees it as
``REMOTE_ADDR``, the address axes counts failures against.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
import websockets

from .conftest import make_stack
from .stack import PASSWORD, ROOT, Stack, recv_until, send_json

pytestmark = pytest.mark.integration

TOKEN = "login-throttle-test-token"
LIMIT = 5  # LOGIN_FAILURE_LIMIT's default
COOLOFF_S = 900  # LOGIN_COOLOFF_S's default
LOGIN = "/accounts/login/"
ADMIN_LOGIN = "/admin/login/"
LOCKOUT_TEXT = "Too many failed logins"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url):
    yield from make_stack(tmp_path_factory, redis_url, FLEET_TOKEN=TOKEN)


@pytest.fixture(scope="module")
def users(stack: Stack) -> None:
    stack.create_users("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")
    stack.manage(
        "shell",
        "-c",
        (
            "from django.contrib.auth import get_user_model\n"
            f"get_user_model().objects.create_superuser('root', password={PASSWORD!r})"
        ),
    )


class Client:
    """One browser at one client address: its own cookies, every request forwarded from ``address``."""

    def __init__(self, stack: Stack, address: str) -> None:
        self.stack = stack
        self.address = address
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.opener.addheaders.append(("X-Forwarded-For", address))

    def open(
        self,
        path: str,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, str]:
        """``(status, text)`` after redirects."""
        data = urllib.parse.urlencode(form).encode() if form else body
        request = urllib.request.Request(
            self.stack.base_url + path,
            data=data,
            headers={"Referer": self.stack.base_url + path, **(headers or {})},
        )
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def log_in(self, username: str, password: str = PASSWORD, path: str = LOGIN) -> tuple[int, str]:
        _, page = self.open(path)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        return self.open(path, {"username": username, "password": password, "csrfmiddlewaretoken": token})

    def fail(self, username: str, times: int = LIMIT, path: str = LOGIN) -> list[int]:
        return [self.log_in(username, "wrong-password", path)[0] for _ in range(times)]

    @property
    def session(self) -> str | None:
        return next((cookie.value for cookie in self.jar if cookie.name == "sessionid"), None)


def test_the_limit_th_failure_locks_the_address_out_even_for_the_right_password(stack, users):
    client = Client(stack, "203.0.113.1")

    statuses = client.fail("alice")
    status, page = client.log_in("alice")

    assert statuses == [200] * (LIMIT - 1) + [429]
    assert status == 429 and client.session is None
    assert LOCKOUT_TEXT in page
    assert f"locked after {LIMIT} failed attempts" in page
    assert "Try again in 15 minutes." in page


def test_a_locked_out_address_is_refused_whoever_it_tries(stack, users):
    locked = Client(stack, "203.0.113.2")
    locked.fail("bob")

    other_user_here = Client(stack, locked.address)
    other_user_elsewhere = Client(stack, "203.0.113.3")

    assert other_user_here.log_in("carol")[0] == 429 and other_user_here.session is None
    assert other_user_elsewhere.log_in("carol")[0] == 200 and other_user_elsewhere.session is not None


def test_a_user_guessed_at_from_many_addresses_is_locked_out_everywhere(stack, users):
    guessers = [Client(stack, f"198.51.100.{n}") for n in range(1, LIMIT + 1)]
    statuses = [guesser.fail("grace", times=1)[0] for guesser in guessers]
    grace_elsewhere = Client(stack, "198.51.100.200")
    someone_else_there = Client(stack, grace_elsewhere.address)

    assert statuses == [200] * (LIMIT - 1) + [429]  # no address reached its own limit
    assert grace_elsewhere.log_in("grace")[0] == 429 and grace_elsewhere.session is None
    assert someone_else_there.log_in("heidi")[0] == 200  # the address itself is not locked
    stack.manage("axes_reset_username", "grace")
    assert grace_elsewhere.log_in("grace")[0] == 200 and grace_elsewhere.session is not None


@pytest.mark.parametrize(
    "command, address",
    [
        ("axes_reset_ip", "203.0.113.10"),
        ("axes_reset_username", "203.0.113.11"),
        ("axes_reset", "203.0.113.12"),
    ],
)
def test_an_operator_lifts_a_lockout_with_the_axes_commands(stack, users, command, address):
    client = Client(stack, address)
    client.fail("dave")
    assert client.log_in("dave")[0] == 429

    stack.manage(
        command, *{"axes_reset_ip": [address], "axes_reset_username": ["dave"], "axes_reset": []}[command]
    )

    assert client.log_in("dave")[0] == 200 and client.session is not None


def test_the_cool_off_runs_from_the_last_attempt(stack, users):
    client = Client(stack, "203.0.113.13")
    client.fail("frank")

    def age_attempts(by_s: int) -> None:
        stack.manage(
            "shell",
            "-c",
            (
                "from datetime import timedelta; from django.db.models import F; from axes.models import AccessAttempt\n"
                f"AccessAttempt.objects.filter(ip_address={client.address!r})"
                f".update(attempt_time=F('attempt_time') - timedelta(seconds={by_s}))"
            ),
        )

    age_attempts(COOLOFF_S - 60)
    assert client.log_in("frank")[0] == 429  # not over yet, and this attempt starts it again
    age_attempts(COOLOFF_S - 60)
    assert client.log_in("frank")[0] == 429
    age_attempts(COOLOFF_S + 60)
    assert client.log_in("frank")[0] == 200 and client.session is not None


def test_the_admin_login_is_throttled_too(stack, users):
    client = Client(stack, "203.0.113.20")

    statuses = client.fail("root", path=ADMIN_LOGIN)
    status, page = client.log_in("root", path=ADMIN_LOGIN)

    assert statuses[-1] == 429
    assert status == 429 and LOCKOUT_TEXT in page and client.session is None
    stack.manage("axes_reset_ip", client.address)
    assert client.log_in("root", path=ADMIN_LOGIN)[0] == 200 and client.session is not None


def chat_socket(stack: Stack, room: str, session: str, address: str):
    return websockets.connect(
        f"{stack.ws_url}/ws/chat/{room}/",
        origin=stack.base_url,
        open_timeout=10,
        additional_headers={"Cookie": f"sessionid={session}", "X-Forwarded-For": address},
    )


async def test_a_locked_out_address_keeps_its_sessions_sockets_and_the_report_api(stack, users):
    erin = Client(stack, "203.0.113.30")
    guesser = Client(stack, erin.address)  # someone behind the same address, guessing erin's password
    await asyncio.to_thread(erin.log_in, "erin")
    room = f"room-{uuid.uuid4().hex[:12]}"

    async with chat_socket(stack, room, erin.session, erin.address) as before:
        await recv_until(before, "chat.history")
        await asyncio.to_thread(guesser.fail, "erin")
        assert (await asyncio.to_thread(guesser.log_in, "erin"))[0] == 429

        async with chat_socket(stack, room, erin.session, erin.address) as after:  # a new handshake
            await recv_until(after, "chat.history")
            await send_json(after, {"type": "chat.message", "message": "still here", "client_id": "c1"})
            assert (await recv_until(before, "chat.message"))["message"] == "still here"
            assert (await recv_until(after, "chat.message"))["user"] == "erin"

    report = await asyncio.to_thread(
        erin.open,
        "/api/machines/locked-01/report",
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "application/json",
        },
        body=json.dumps({"state": "pending"}).encode(),
    )
    status = await asyncio.to_thread(erin.open, "/api/status")
    assert report[0] == 202
    assert status[0] == 200 and "machines" in json.loads(status[1])
    assert (await asyncio.to_thread(guesser.log_in, "erin"))[0] == 429  # and the lockout still holds


def create_operator(stack: Stack, username: str, password: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "createoperator", username, "--noinput"],
        cwd=ROOT,
        env={**stack.env, "OPERATOR_PASSWORD": password},
        capture_output=True,
        text=True,
    )


def test_make_user_creates_an_ordinary_user_who_cannot_use_the_admin(stack, users):
    recipes = {
        target: subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True).stdout
        for target in ("user", "admin")
    }
    assert "manage.py createoperator" in recipes["user"] and "createsuperuser" not in recipes["user"]
    assert "manage.py createsuperuser" in recipes["admin"]

    assert create_operator(stack, "opal", PASSWORD).returncode == 0
    flags = stack.manage(
        "shell",
        "--no-imports",
        "-c",
        (
            "from django.contrib.auth import get_user_model\n"
            "opal = get_user_model().objects.get(username='opal'); print(opal.is_active, opal.is_staff, opal.is_superuser)"
        ),
    )
    client = Client(stack, "203.0.113.40")
    client.log_in("opal")
    status, page = client.open("/admin/")

    assert flags.split() == ["True", "False", "False"]
    assert client.session is not None
    assert status == 200 and "not authorized to access this page" in page


@pytest.mark.parametrize(
    "username, password, error",
    [
        ("alice", PASSWORD, "already exists"),
        ("quinn", "12345678", "too common"),
        ("bad name!", PASSWORD, "Enter a valid username"),
    ],
)
def test_createoperator_refuses_a_taken_name_a_weak_password_or_a_bad_name(
    stack, users, username, password, error
):
    result = create_operator(stack, username, password)

    assert result.returncode != 0 and error in result.stderr
