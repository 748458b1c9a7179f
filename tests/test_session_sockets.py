"""Sockets follow their session (consumers/sessions.py): when it ends, they close with 4001.

First the check itself, against the database: each way a session ends, two queries for any
number of sessions. Then the real processes, with two uvicorn workers and sockets of the session
on both: a logout (in Chromium, from a second tab; and over plain HTTP) closes its sockets at once,
on a stack whose periodic check is too slow to be what closed them; a password change, a
deactivated or deleted user, an expired or deleted session close them within
SESSION_CHECK_EVERY_S. A socket of another session stays open, and a closed one can neither post
nor come back.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import urllib.parse
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from project import protocol
from project.socket_auth import ended_sessions

from .conftest import make_stack
from .stack import PASSWORD, Stack, recv_until, send_json
from .test_browser import CHROMIUM, CHROMIUM_ARGS, live, open_page, send, wait_for_bodies

CHECK_EVERY_S = 2
CLOSE_MARGIN_S = 2.0  # a check's query, the close frame's way to the client, a loaded CI host
PUSH_WITHIN_S = 1.5  # a logout reaches its sockets through Redis, not through a check


# --- The check, against the database ---------------------------------------------------------


@pytest.mark.django_db
def test_each_way_a_session_ends_is_seen_in_two_queries(django_assert_num_queries):
    from django.contrib.auth.models import User
    from django.contrib.sessions.models import Session
    from django.test import Client
    from django.utils import timezone

    def log_in(name: str) -> str:
        user = User.objects.filter(username=name).first() or User.objects.create_user(name, password=PASSWORD)
        client = Client()
        client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
        return client.session.session_key

    keys = {how: log_in(how) for how in ("live", "password", "inactive", "deleted", "expired", "gone")}
    other_session_of_live = log_in("live")
    user = User.objects.get(username="password")
    user.set_password("a-new-password-4242")
    user.save()
    User.objects.filter(username="inactive").update(is_active=False)
    User.objects.filter(username="deleted").delete()
    Session.objects.filter(pk=keys["expired"]).update(expire_date=timezone.now() - timedelta(seconds=1))
    Session.objects.filter(pk=keys["gone"]).delete()

    with django_assert_num_queries(2):
        ended = ended_sessions([*keys.values(), other_session_of_live, "never-a-session"])
    assert ended == {keys[how] for how in ("password", "inactive", "deleted", "expired", "gone")} | {
        "never-a-session"
    }


# --- Helpers over the real processes -----------------------------------------------------------


def log_out(stack: Stack, session: str) -> None:
    """Log out through the page's logout form (a POST with the CSRF token)."""
    home = urllib.request.urlopen(
        urllib.request.Request(stack.base_url + "/", headers={"Cookie": f"sessionid={session}"})
    )
    csrf_cookie = re.search(r"csrftoken=([^;]+)", " ".join(home.headers.get_all("Set-Cookie"))).group(1)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', home.read().decode()).group(1)
    request = urllib.request.Request(
        stack.base_url + "/accounts/logout/",
        data=urllib.parse.urlencode({"csrfmiddlewaretoken": token}).encode(),
        headers={"Cookie": f"sessionid={session}; csrftoken={csrf_cookie}", "Referer": stack.base_url + "/"},
    )
    urllib.request.urlopen(request).close()


def end_in_database(stack: Stack, user: str, session: str, how: str) -> float:
    """End ``session`` in ``how`` from a ``manage.py shell``; the wall-clock time it committed."""
    change = {
        "password": "user.set_password('a-new-password-4242'); user.save()",
        "inactive": "user.is_active = False; user.save()",
        "deleted": "user.delete()",
        "expired": "Session.objects.filter(pk=key).update(expire_date=timezone.now() - timedelta(seconds=1))",
        "gone": "Session.objects.filter(pk=key).delete()",
    }[how]
    code = (
        "import time; from datetime import timedelta; from django.utils import timezone\n"
        "from django.contrib.auth.models import User; from django.contrib.sessions.models import Session\n"
        f"user = User.objects.get(username={user!r}); key = {session!r}\n"
        f"{change}\nprint(time.time())"
    )
    return float(stack.manage("shell", "-c", code).split()[-1])


def web_workers(stack: Stack) -> list[psutil.Process]:
    """The uvicorn worker processes of ``web`` (its master's other child is multiprocessing's
    resource tracker)."""
    master = psutil.Process(stack.processes["web"].pid)
    return [child for child in master.children() if "spawn_main" in " ".join(child.cmdline())]


def holder(workers: list[psutil.Process], ws) -> int | None:
    """The pid of the web worker holding ``ws``'s connection (by the client's port)."""
    port = ws.transport.get_extra_info("sockname")[1]
    for worker in workers:
        if any(conn.raddr and conn.raddr.port == port for conn in worker.net_connections(kind="tcp")):
            return worker.pid
    return None


async def open_on_every_worker(stack: Stack, session: str, paths: list[str]) -> list:
    """A socket of ``session`` to each of ``paths`` on each uvicorn worker. The kernel hands a
    connection to whichever worker accepts first, often the same one many times over; so while
    the sockets for one worker open, the others are paused (SIGSTOP) and cannot accept. Which
    worker holds each socket is read from the kernel's connection table, not from the workers'
    published counts, which lag (and move with other tests' sockets closing meanwhile)."""
    workers = web_workers(stack)
    assert len(workers) == 2, workers
    sockets = []
    for worker in workers:
        paused = [other for other in workers if other.pid != worker.pid]
        for other in paused:
            other.suspend()
        try:
            opened = await asyncio.gather(*(stack.connect(path, session) for path in paths))
        finally:
            for other in paused:
                other.resume()
        assert [holder(workers, ws) for ws in opened] == [worker.pid] * len(paths)
        sockets += opened
    return sockets


async def closed_at(ws, timeout_s: float) -> float | None:
    """When (wall clock) the server closed ``ws``, or ``None`` if it is still open after
    ``timeout_s``; reads and drops what comes before."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                await ws.recv()
    except ConnectionClosed:
        return time.time()
    except TimeoutError:
        return None


async def assert_all_closed_as_ended(sockets: list, since: float, within_s: float) -> list[float]:
    """Every socket closed with 4001 ``session_ended`` within ``within_s`` of ``since``; the latencies."""
    closed = await asyncio.gather(*(closed_at(ws, within_s + 3) for ws in sockets))
    still_open = sum(at is None for at in closed)
    assert not still_open, (
        f"{still_open} of {len(sockets)} sockets still open {within_s + 3} s after their session ended"
    )
    assert [(ws.close_code, ws.close_reason) for ws in sockets] == [
        (protocol.CLOSE_SESSION_ENDED, protocol.SESSION_ENDED)
    ] * len(sockets)
    latencies = [round(at - since, 3) for at in closed]
    print(f"close latencies (s) of {len(sockets)} sockets: {sorted(latencies)}")
    assert max(latencies) <= within_s, latencies
    return latencies


async def assert_cannot_post_or_return(stack: Stack, session: str, ws, room: str, bystander) -> None:
    """A socket closed as ended posts nothing, its session opens no new socket, and the other
    user's socket in the room stays open and posts."""
    with pytest.raises(ConnectionClosed):
        await send_json(ws, {"type": "chat.message", "message": "after the end", "client_id": "late"})
    with pytest.raises(InvalidStatus) as refused:
        await stack.connect(f"/ws/chat/{room}/", session)
    assert refused.value.response.status_code == 403
    await send_json(bystander, {"type": "chat.message", "message": "still here", "client_id": "b1"})
    frame = await recv_until(bystander, "chat.message")
    assert (frame["message"], frame["user"]) == ("still here", "bystander")


async def drain(ws) -> list[dict]:
    """Frames already waiting on ``ws`` (without waiting for more)."""
    frames = []
    while True:
        try:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), 0.2)))
        except TimeoutError:
            return frames


def new_user(stack: Stack) -> str:
    name = f"u-{uuid.uuid4().hex[:10]}"
    stack.create_users(name)
    return name


@pytest.fixture(scope="class")
def bystander_session(stack: Stack) -> str:
    """Another user's session, which nothing in these tests ends."""
    stack.create_users("bystander")
    return stack.login("bystander")


# --- A logout closes its sockets at once --------------------------------------------------------


class TestLogout:
    """On a stack whose periodic check would take 10 minutes: only the logout's message can
    close the sockets in time."""

    @pytest.fixture(scope="class")
    @classmethod
    def stack(cls, tmp_path_factory, redis_url):
        yield from make_stack(tmp_path_factory, redis_url, SESSION_CHECK_EVERY_S="600")

    @pytest.mark.integration
    async def test_logout_closes_every_socket_of_its_session_on_every_web_process(
        self, stack, bystander_session
    ):
        user = new_user(stack)
        ended, same_user_elsewhere = stack.login(user), stack.login(user)
        room = f"r-{uuid.uuid4().hex[:8]}"
        bystander = await stack.connect(f"/ws/chat/{room}/", bystander_session)
        other_device = await stack.connect(f"/ws/chat/{room}-2/", same_user_elsewhere)
        sockets = await open_on_every_worker(
            stack, ended, [f"/ws/chat/{room}/", "/ws/chat/lobby/", "/ws/status/"]
        )

        logged_out_at = time.time()
        log_out(stack, ended)
        await assert_all_closed_as_ended(sockets, logged_out_at, PUSH_WITHIN_S)

        await assert_cannot_post_or_return(stack, ended, sockets[0], room, bystander)
        # The same user's other session is another login: it is not logged out.
        await send_json(other_device, {"type": "chat.message", "message": "other device", "client_id": "o1"})
        assert (await recv_until(other_device, "chat.message"))["message"] == "other device"
        await bystander.close()
        await other_device.close()

    @pytest.fixture(scope="class")
    @classmethod
    def browser(cls):
        """tests/test_browser.py's Chromium, but closed with this class: Playwright's sync API
        holds an event loop while it runs, and the asyncio tests after this class need theirs."""
        if not Path(CHROMIUM).exists():
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI=true but no chromium at {CHROMIUM}")
            pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()

    @pytest.mark.browser
    def test_logout_in_one_tab_ends_the_other_tabs_and_they_stay_ended(self, browser, stack):
        user = new_user(stack)
        # Every socket's close code, and when, as the page's WebSocket saw it.
        record_closes = """
            window.closes = [];
            window.WebSocket = class extends window.WebSocket {
              constructor(...args) {
                super(...args);
                this.addEventListener("close", (event) => window.closes.push([event.code, Date.now()]));
              }
            };"""
        chat = open_page(browser, stack, stack.login(user), "/")
        chat.context.add_init_script(record_closes)
        sockets_opened = []
        chat.context.on("page", lambda page: page.on("websocket", lambda ws: sockets_opened.append(ws.url)))
        chat.on("websocket", lambda ws: sockets_opened.append(ws.url))
        chat.goto(stack.base_url + "/chat/crew/")
        dashboard = chat.context.new_page()
        dashboard.goto(stack.base_url + "/dashboard/")
        live(chat), live(dashboard)
        send(chat, "before logging out")
        wait_for_bodies(chat, ["before logging out"])
        assert len(sockets_opened) == 2

        other_tab = chat.context.new_page()
        other_tab.goto(stack.base_url + "/")
        clicked_at_ms = time.time() * 1000
        other_tab.click("form[action='/accounts/logout/'] button")
        other_tab.wait_for_url("**/accounts/login/")

        for page in (chat, dashboard):
            page.wait_for_selector(
                "[data-connection-indicator][data-state='ended']", timeout=PUSH_WITHIN_S * 1000
            )
            [(code, closed_ms)] = page.evaluate("window.closes")
            assert code == protocol.CLOSE_SESSION_ENDED
            print(f"{page.url}: closed {(closed_ms - clicked_at_ms) / 1000:.3f} s after the logout click")
            assert closed_ms - clicked_at_ms <= PUSH_WITHIN_S * 1000
            indicator = page.locator("[data-connection-indicator]")
            assert indicator.inner_text().startswith("Your session has ended.")
        assert chat.locator("#composer-input").is_disabled()

        chat.evaluate("window.dispatchEvent(new Event('online'))")  # the network "returns": no retry either
        time.sleep(4)  # past several reconnect delays
        assert len(sockets_opened) == 2
        for page in (chat, dashboard):
            assert page.locator("[data-connection-indicator]").get_attribute("data-state") == "ended"

        # "Log in again" goes through the login form and back to the room.
        chat.click("[data-connection-indicator] a")
        chat.wait_for_url("**/accounts/login/?next=/chat/crew/")
        chat.fill("input[name='username']", user)
        chat.fill("input[name='password']", PASSWORD)
        chat.click("main form button[type='submit']")
        chat.wait_for_url("**/chat/crew/")
        live(chat)
        wait_for_bodies(chat, ["before logging out"])
        chat.context.close()


# --- Everything else ends a session in the database: the periodic check --------------------------


class TestCheck:
    @pytest.fixture(scope="class")
    @classmethod
    def stack(cls, tmp_path_factory, redis_url):
        yield from make_stack(tmp_path_factory, redis_url, SESSION_CHECK_EVERY_S=str(CHECK_EVERY_S))

    @pytest.mark.integration
    @pytest.mark.parametrize("how", ["password", "inactive", "deleted", "expired", "gone"])
    async def test_a_session_ended_in_the_database_closes_its_sockets_on_every_web_process(
        self, stack, bystander_session, how
    ):
        user = new_user(stack)
        session = stack.login(user)
        room = f"r-{uuid.uuid4().hex[:8]}"
        bystander = await stack.connect(f"/ws/chat/{room}/", bystander_session)
        sockets = await open_on_every_worker(stack, session, [f"/ws/chat/{room}/", "/ws/status/"])

        ended_at = end_in_database(stack, user, session, how)
        await assert_all_closed_as_ended(sockets, ended_at, CHECK_EVERY_S + CLOSE_MARGIN_S)

        await assert_cannot_post_or_return(stack, session, sockets[0], room, bystander)
        assert not [frame for frame in await drain(bystander) if frame.get("user") == user]
        await bystander.close()
