"""Agent tokens: several named tokens at once, stored hashed, revoked at once on every web process.

First the book each web process keeps (project/api/tokens.py) against the test database; then
the real processes: tokens made with ``manage.py agenttoken`` and in ``/admin/``, reports sent to
each uvicorn worker in turn (the others paused with SIGSTOP, so that only it can accept), a
revocation refused by every one of them within about a second, and what is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.cookiejar
import json
import logging
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from project.api.tokens import ACCEPTED, RELOAD_EVERY_S, REVOKED, UNCHECKED, UNKNOWN, TokenBook, Verdict
from workers.models import AgentToken

from .conftest import make_stack
from .scrape import moved, scrape
from .stack import PASSWORD, ROOT, Stack
from .test_session_sockets import web_workers

ENV_TOKEN = "agent-tokens-test-fleet-token"
METRICS_TOKEN = "agent-tokens-test-metrics-token"
REPORT = {"state": "provisioning", "progress": 10}
REFUSED = {"error": "unauthorized", "detail": "the token is not valid (unknown or revoked)"}
# A revocation must be refused within RELOAD_EVERY_S (1 s) of its commit; the margin is for a
# 2-core host shared with other suites (SIGSTOP/SIGCONT and a fresh connection per request).
REVOKED_WITHIN_S = 3.0


# --- The book against the test database --------------------------------------------------------


def make_token(name: str) -> str:
    token = AgentToken(name=name)
    secret = token.issue()
    token.save()
    return secret


def revoke(name: str) -> None:
    assert AgentToken.objects.get(name=name).revoke()


@pytest.mark.django_db(transaction=True)
async def test_the_book_names_valid_tokens_and_refuses_revoked_and_unknown_ones(settings):
    settings.FLEET_TOKEN = ENV_TOKEN
    first, second = await sync_to_async(make_token)("first"), await sync_to_async(make_token)("second")
    await sync_to_async(revoke)("second")
    book = TokenBook()

    assert await book.judge(first) == Verdict(ACCEPTED, "first")
    assert await book.judge(ENV_TOKEN) == Verdict(ACCEPTED, "env")
    assert await book.judge(second) == Verdict(REVOKED, "second")
    assert await book.judge("not-a-token") == Verdict(UNKNOWN)
    assert await book.judge(AgentToken.digest_of(first)) == Verdict(UNKNOWN)  # the hash is no token


@pytest.mark.django_db(transaction=True)
async def test_the_book_reloads_once_a_second_at_most(settings):
    settings.FLEET_TOKEN = ""
    book = TokenBook()
    assert await book.judge("not-yet") == Verdict(UNKNOWN)
    later = await sync_to_async(make_token)("later")

    within_the_second = await book.judge(later)
    await asyncio.sleep(RELOAD_EVERY_S)
    after_it = await book.judge(later)

    assert within_the_second == Verdict(UNKNOWN)  # judged by the copy loaded a moment ago
    assert after_it == Verdict(ACCEPTED, "later")


@pytest.mark.django_db(transaction=True)
async def test_without_the_database_the_book_keeps_its_last_copy_and_a_new_one_checks_only_fleet_token(
    settings, caplog
):
    settings.FLEET_TOKEN = ENV_TOKEN
    kept = await sync_to_async(make_token)("kept")
    book = TokenBook()
    assert await book.judge(kept) == Verdict(ACCEPTED, "kept")

    await sync_to_async(drop_agent_token_table)()
    try:
        await asyncio.sleep(RELOAD_EVERY_S)
        with caplog.at_level(logging.WARNING, logger="project.api.tokens"):
            still_kept = await book.judge(kept)
            fresh_book = TokenBook()
            unchecked = await fresh_book.judge(kept)
            env = await fresh_book.judge(ENV_TOKEN)
    finally:
        await sync_to_async(create_agent_token_table)()

    assert still_kept == Verdict(ACCEPTED, "kept")
    assert unchecked == Verdict(UNCHECKED)
    assert env == Verdict(ACCEPTED, "env")
    assert "could not reload the agent tokens" in caplog.text


def drop_agent_token_table() -> None:
    with connection.schema_editor() as editor:
        editor.delete_model(AgentToken)


def create_agent_token_table() -> None:
    with connection.schema_editor() as editor:
        editor.create_model(AgentToken)


# --- Over the real processes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url):
    yield from make_stack(tmp_path_factory, redis_url, FLEET_TOKEN=ENV_TOKEN, METRICS_TOKEN=METRICS_TOKEN)


def report(
    stack: Stack, token: str, path: str = "/api/machines/node-1/report", body=REPORT
) -> tuple[int, dict]:
    request = urllib.request.Request(
        stack.base_url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def report_to(stack: Stack, worker: psutil.Process, token: str) -> int:
    """Report to ``worker`` alone: the other web workers are paused and cannot accept."""
    others = [other for other in web_workers(stack) if other.pid != worker.pid]
    for other in others:
        other.suspend()
    try:
        return report(stack, token)[0]
    finally:
        for other in others:
            other.resume()


def agenttoken(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "agenttoken", *args],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
    )


def create(stack: Stack, name: str) -> str:
    """A new token, once every web process can know it: each judges by a copy of the tokens at
    most RELOAD_EVERY_S old (project/api/tokens.py), so one used at once may still be unknown."""
    made = agenttoken(stack, "create", name)
    assert made.returncode == 0, made.stderr
    time.sleep(RELOAD_EVERY_S + 0.2)
    return made.stdout.strip()


def revoked_at(stack: Stack, name: str) -> float:
    """When (wall clock) ``name`` was revoked, as stored."""
    code = f"from workers.models import AgentToken; print(AgentToken.objects.get(name={name!r}).revoked_at.timestamp())"
    return float(stack.manage("shell", "-c", code).split()[-1])


def reports_to_each_worker(stack: Stack, token: str, revoke) -> dict[int, list[tuple[float, int]]]:
    """Report with ``token`` to each web worker in turn, without pause, from a second before
    ``revoke()`` is called until every worker has refused it (or 15 s); each worker's
    ``(wall-clock time, status)`` answers."""
    workers = web_workers(stack)
    answers: dict[int, list[tuple[float, int]]] = {worker.pid: [] for worker in workers}
    refused = threading.Event()

    def poll() -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not refused.is_set():
            for worker in workers:
                status = report_to(stack, worker, token)
                answers[worker.pid].append((time.time(), status))
            if all(any(status == 401 for _, status in got) for got in answers.values()):
                refused.set()

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        time.sleep(1.0)  # every worker's copy now reloads while the revocation commits
        revoke()
    finally:
        poller.join()
    return answers


def refusal_delays(answers: dict[int, list[tuple[float, int]]], since: float) -> dict[int, float]:
    """Per worker: seconds from ``since`` to its first 401; asserts that it accepted nothing after."""
    delays = {}
    for pid, got in answers.items():
        first_refusal = next((index for index, (_, status) in enumerate(got) if status == 401), None)
        assert first_refusal is not None, f"web worker {pid} never refused the token: {got}"
        assert {status for _, status in got[first_refusal:]} == {401}, got
        assert {status for _, status in got[:first_refusal]} <= {202}, got
        delays[pid] = got[first_refusal][0] - since
    return delays


@pytest.mark.integration
def test_two_tokens_report_and_a_revoked_one_is_refused_within_a_second_on_every_web_process(stack):
    first, second = create(stack, "rack-1"), create(stack, "rack-2")
    workers = web_workers(stack)
    assert len(workers) == 2, workers
    for worker in workers:  # each process has loaded both, and FLEET_TOKEN works as ever
        assert [report_to(stack, worker, token) for token in (first, second, ENV_TOKEN)] == [202, 202, 202]

    revoked = []
    answers = reports_to_each_worker(
        stack, first, lambda: revoked.append(agenttoken(stack, "revoke", "rack-1"))
    )
    delays = refusal_delays(answers, revoked_at(stack, "rack-1"))

    print(
        f"\nrevoked 'rack-1': refused by each web worker after {sorted(round(s, 3) for s in delays.values())} s"
    )
    assert revoked[0].returncode == 0, revoked[0].stderr
    assert delays.keys() == {worker.pid for worker in workers}
    assert max(delays.values()) < REVOKED_WITHIN_S, delays
    for worker in workers:
        assert [report_to(stack, worker, token) for token in (first, second, ENV_TOKEN)] == [401, 202, 202]


@pytest.mark.integration
def test_a_revoked_and_an_unknown_token_get_the_same_401_and_only_the_log_names_the_revoked_one(stack):
    revoked = create(stack, "old-rack")
    assert report(stack, revoked)[0] == 202
    agenttoken(stack, "revoke", "old-rack")
    time.sleep(RELOAD_EVERY_S + 0.2)

    answers = [report(stack, token) for token in (revoked, "never-issued", revoked + "x")]
    batch = report(stack, revoked, "/api/reports", [{"name": "node-2", "report": REPORT}])

    assert answers == [(401, REFUSED)] * 3
    assert batch == (401, REFUSED)
    web_log = stack.read_log("web")
    assert "refused POST /api/machines/node-1/report: revoked token 'old-rack'" in web_log
    assert "refused POST /api/machines/node-1/report: unknown token" in web_log
    assert revoked not in web_log
    assert "agent token 'old-rack' in use" in web_log


@pytest.mark.integration
def test_requests_are_counted_by_token_name_and_outcome(stack):
    kept, dropped = create(stack, "metered"), create(stack, "metered-old")
    assert report(stack, dropped)[0] == 202
    agenttoken(stack, "revoke", "metered-old")
    time.sleep(RELOAD_EVERY_S + 0.2)
    before = scrape(f"{stack.base_url}/metrics", METRICS_TOKEN)

    statuses = [report(stack, token)[0] for token in (kept, kept, ENV_TOKEN, dropped, "never-issued", "")]

    after = scrape(f"{stack.base_url}/metrics", METRICS_TOKEN)
    counted = {
        (token, outcome): moved(
            before, after, "fleetchat_agent_token_requests_total", token=token, outcome=outcome
        )
        for token, outcome in [
            ("metered", "accepted"),
            ("env", "accepted"),
            ("metered-old", "revoked"),
            ("", "unknown"),
            ("", "missing"),
        ]
    }
    assert statuses == [202, 202, 202, 401, 401, 401]
    assert counted == {
        ("metered", "accepted"): 2,
        ("env", "accepted"): 1,
        ("metered-old", "revoked"): 1,
        ("", "unknown"): 1,
        ("", "missing"): 1,
    }


@pytest.mark.integration
def test_the_database_holds_the_token_s_hash_and_never_the_token(stack, tmp_path):
    token = create(stack, "stored")
    listing = agenttoken(stack, "list").stdout

    database = Path(stack.env["DATABASE_URL"].removeprefix("sqlite:///"))
    stored = b"".join(path.read_bytes() for path in database.parent.glob(database.name + "*"))
    assert hashlib.sha256(token.encode()).hexdigest().encode() in stored
    assert token.encode() not in stored
    assert re.search(r"^stored\s+active\s", listing, re.M) and token not in listing
    assert re.search(r"^env\s+active\s+FLEET_TOKEN", listing, re.M)


@pytest.mark.integration
@pytest.mark.parametrize(
    "args, error",
    [
        (("create", "env"), "'env' is FLEET_TOKEN's name"),
        (("create", "has space"), "1-64 letters, digits"),
        (("create", "twice"), None),
        (("create", "twice"), "already exists"),
        (("revoke", "env"), "remove it from the environment"),
        (("revoke", "nobody"), "no agent token is named 'nobody'"),
    ],
)
def test_the_command_refuses_what_it_cannot_do_with_a_clear_error(stack, args, error):
    done = agenttoken(stack, *args)

    if error is None:
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode == 1 and error in done.stderr and done.stdout == "", (done.stdout, done.stderr)


# --- The admin ----------------------------------------------------------------------------------------


class Admin:
    """A superuser's browser: its own cookies, forms posted with their CSRF token."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def open(self, path: str, form: dict | None = None) -> tuple[int, str]:
        request = urllib.request.Request(
            self.stack.base_url + path,
            data=urllib.parse.urlencode(form, doseq=True).encode() if form else None,
            headers={"Referer": self.stack.base_url + path},
        )
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def submit(self, path: str, form: dict) -> tuple[int, str]:
        _, page = self.open(path)
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        return self.open(path, {**form, "csrfmiddlewaretoken": csrf})


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Admin:
    stack.manage(
        "shell",
        "-c",
        (
            "from django.contrib.auth import get_user_model\n"
            f"get_user_model().objects.create_superuser('root', password={PASSWORD!r})"
        ),
    )
    browser = Admin(stack)
    status, page = browser.submit("/admin/login/?next=/admin/", {"username": "root", "password": PASSWORD})
    assert status == 200 and "Log out" in page
    return browser


CHANGELIST = "/admin/workers/agenttoken/"


@pytest.mark.integration
def test_the_admin_shows_a_new_token_once_lists_tokens_and_revokes_them(stack, admin):
    status, issued = admin.submit(CHANGELIST + "add/", {"name": "from-admin"})
    secret = re.search(r'id="agent-token-secret"[^>]*value="([^"]+)"', issued).group(1)
    assert status == 200 and report(stack, secret)[0] == 202

    _, listing = admin.open(CHANGELIST)
    pk = re.search(
        r'name="_selected_action" value="(\d+)"[^>]*>\s*</td>\s*<th class="field-name"><a href="[^"]+">from-admin<',
        listing,
    ).group(1)
    _, change_page = admin.open(f"{CHANGELIST}{pk}/change/")
    assert (
        "from-admin" in listing
        and "active" in listing
        and secret not in listing
        and secret not in change_page
    )

    pages = []
    answers = reports_to_each_worker(
        stack,
        secret,
        lambda: pages.append(admin.submit(CHANGELIST, {"action": "revoke", "_selected_action": [pk]})),
    )
    delays = refusal_delays(answers, revoked_at(stack, "from-admin"))

    print(
        f"\nrevoked 'from-admin' in the admin: refused by each web worker after {sorted(round(s, 3) for s in delays.values())} s"
    )
    assert "Revoked from-admin" in pages[0][1]
    assert len(delays) == 2 and max(delays.values()) < REVOKED_WITHIN_S, delays
    assert report(stack, ENV_TOKEN)[0] == 202
    _, revoked_only = admin.open(CHANGELIST + "?revoked_at__isempty=0")
    assert "from-admin" in revoked_only
