"""The pages in a real browser: Playwright driving Debian's chromium against the real processes.

Without a chromium these tests skip, except under CI=true, where a missing browser fails.
``SCREENSHOTS_DIR=docs make test`` also refreshes the screenshots in docs/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from . import csp
from .conftest import make_stack
from .stack import PASSWORD, Stack

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "browser-test-token-9c8b7a"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but no chromium at {CHROMIUM}; .ci/run installs Debian's chromium")
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url):
    yield from make_stack(tmp_path_factory, redis_url, FLEET_TOKEN=TOKEN, OFFLINE_AFTER="600")


@pytest.fixture(scope="module")
def sessions(stack: Stack) -> dict[str, str]:
    names = ("ana", "ben")
    stack.create_users(*names)
    return {name: stack.login(name) for name in names}


def open_page(browser, stack: Stack, session: str, path: str):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    csp.watch(context)
    context.add_cookies([{"name": "sessionid", "value": session, "url": stack.base_url}])
    page = context.new_page()
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.dialogs = dialogs
    page.goto(stack.base_url + path)
    return page


def live(page) -> None:
    page.wait_for_selector("[data-connection-indicator][data-state='open']", timeout=15000)


def wait_for(page, condition: str, timeout_s: float = 10) -> None:
    """Until the expression ``condition`` holds in the page. Not Playwright's wait_for_function:
    it polls with ``eval``, which the pages' Content-Security-Policy refuses in some Chromium
    versions (156 does, Debian's 130s did not)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(condition):
        assert time.monotonic() < deadline, f"never true: {condition}"
        page.wait_for_timeout(50)


def send(page, text: str) -> None:
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")


def bodies(page) -> list[str]:
    return page.locator("#messages .message:not(.pending) .body").all_inner_texts()


def wait_for_bodies(page, expected: list[str], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while bodies(page)[-len(expected) :] != expected:
        assert time.monotonic() < deadline, f"saw {bodies(page)}, wanted {expected} at the end"
        time.sleep(0.1)


def report(stack: Stack, name: str, body: dict) -> None:
    request = urllib.request.Request(
        f"{stack.base_url}/api/machines/{name}/report",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    assert urllib.request.urlopen(request, timeout=5).status == 202


def test_two_users_see_the_same_message_once(browser, stack, sessions):
    ana = open_page(browser, stack, sessions["ana"], "/chat/crew/")
    ben = open_page(browser, stack, sessions["ben"], "/chat/crew/")
    live(ana), live(ben)

    send(ana, "morning, crew")
    wait_for_bodies(ana, ["morning, crew"])
    wait_for_bodies(ben, ["morning, crew"])
    assert bodies(ana).count("morning, crew") == bodies(ben).count("morning, crew") == 1
    ids = [page.locator("#messages .message").last.get_attribute("data-id") for page in (ana, ben)]
    assert ids[0] == ids[1] and ids[0].isdigit()
    assert ben.locator("#messages .message").last.locator(".author").inner_text() == "ana"
    ana.context.close(), ben.context.close()


def test_html_is_shown_as_text_and_never_runs(browser, stack, sessions):
    ana = open_page(browser, stack, sessions["ana"], "/chat/xss/")
    live(ana)
    payload = "<img src=x onerror=alert(1)>"
    send(ana, payload)
    wait_for_bodies(ana, [payload])
    time.sleep(0.5)
    assert ana.dialogs == []
    assert ana.locator("#messages img").count() == 0
    ana.reload()
    live(ana)
    wait_for_bodies(ana, [payload])
    assert ana.dialogs == []
    ana.context.close()


def test_the_policy_refuses_inline_script_and_the_tests_notice(browser, stack, sessions):
    """Each page is served with the Content-Security-Policy, sockets included, and a violation
    is caught: the one provoked here on purpose would fail this test (tests/csp.py)."""
    page = open_page(browser, stack, sessions["ana"], "/chat/policy/")
    live(page)  # the socket to the page's own origin: 'self' covers ws: in Chromium
    policy = page.evaluate(
        "fetch(location.href).then((answer) => answer.headers.get('content-security-policy'))"
    )
    assert "default-src 'self'" in policy and "'unsafe-inline'" not in policy
    page.evaluate("""() => {
        const script = document.createElement("script");
        script.textContent = "window.inlineScriptRan = true";
        document.body.append(script);
        document.body.insertAdjacentHTML("beforeend", '<img src="/static/none.png" onerror="window.inlineScriptRan = true">');
    }""")
    deadline = time.monotonic() + 5
    while len(csp.violations) < 2:
        assert time.monotonic() < deadline, f"violations seen: {csp.violations}"
        page.wait_for_timeout(100)
    assert page.evaluate("window.inlineScriptRan === undefined")
    assert any("script-src-elem refused inline" in seen for seen in csp.violations), csp.violations
    assert any("script-src-attr refused inline" in seen for seen in csp.violations), csp.violations
    csp.violations.clear()  # provoked on purpose
    page.context.close()


def test_the_admin_works_under_the_policy(browser, stack):
    """The admin's own scripts (change lists, inlines, date pickers) run, and nothing of it is
    refused: a violation fails this test."""
    stack.manage(
        "shell",
        "-c",
        (
            "from django.contrib.auth import get_user_model; "
            f"get_user_model().objects.create_superuser('root', password={PASSWORD!r})"
        ),
    )
    page = open_page(browser, stack, stack.login("root"), "/admin/")
    page.get_by_role("link", name="Messages").first.wait_for()

    page.goto(stack.base_url + "/admin/auth/user/")
    page.check("#action-toggle")  # actions.js: select every row
    assert re.fullmatch(r"(\d+) of \1 selected", page.locator(".action-counter").inner_text())

    page.goto(stack.base_url + "/admin/workers/machine/add/")
    page.fill("#id_name", "admin-made")
    rows = page.locator(".dynamic-software")
    page.click(".add-row a")  # inlines.js: another Software row, and away again
    rows.last.locator(".inline-deletelink").click()
    page.click("#id_last_report_0 + .datetimeshortcuts a")  # DateTimeShortcuts.js: "Today"
    page.click("#id_last_report_1 + .datetimeshortcuts a")  # and "Now"
    assert page.input_value("#id_last_report_0") and page.input_value("#id_last_report_1")
    page.click("input[name='_save']")
    page.locator(".messagelist .success").wait_for(timeout=10000)
    page.context.close()


def test_inline_error_next_to_the_composer(browser, stack, sessions):
    ana = open_page(browser, stack, sessions["ana"], "/chat/errors/")
    live(ana)
    ana.evaluate("document.getElementById('composer-input').removeAttribute('maxlength')")
    send(ana, "x" * 2001)
    error = ana.locator("#composer-error")
    error.wait_for(state="visible")
    assert "too long" in error.inner_text()
    ana.context.close()


def test_web_restart_mid_conversation_loses_and_doubles_nothing(browser, stack, sessions):
    ana = open_page(browser, stack, sessions["ana"], "/chat/restart/")
    ben = open_page(browser, stack, sessions["ben"], "/chat/restart/")
    live(ana), live(ben)
    send(ana, "before the restart")
    wait_for_bodies(ben, ["before the restart"])

    stack.stop("web")
    ana.wait_for_selector("[data-connection-indicator][data-state='reconnecting']", timeout=10000)
    send(ana, "typed while the server was down")  # pending, resent on reconnect
    stack.start("web")
    live(ben)
    send(ben, "sent while ana was still reconnecting")
    live(ana)

    expected = {
        "before the restart",
        "typed while the server was down",
        "sent while ana was still reconnecting",
    }
    for page in (ana, ben):
        deadline = time.monotonic() + 20
        while not expected <= set(bodies(page)):
            assert time.monotonic() < deadline, f"{bodies(page)} lacks some of {expected}"
            time.sleep(0.2)
        seen = bodies(page)
        assert all(seen.count(text) == 1 for text in expected), seen
    ana.context.close(), ben.context.close()


def test_a_message_sent_while_the_worker_is_down_is_delivered_once_when_it_returns(browser, stack, sessions):
    """The page keeps the message pending and sends it again on the open socket (chat.js);
    the worker stores it once however many copies wait for it. No reload, no reconnect."""
    ana = open_page(browser, stack, sessions["ana"], "/chat/outage/")
    ben = open_page(browser, stack, sessions["ben"], "/chat/outage/")
    live(ana), live(ben)
    send(ana, "before the outage")
    wait_for_bodies(ben, ["before the outage"])

    stack.stop("worker")
    try:
        send(ana, "sent while the worker was down")
        ana.locator("#messages .message.pending").wait_for(timeout=2000)
        time.sleep(4)  # past the page's first resend
        assert "sent while the worker was down" not in bodies(ben)
    finally:
        stack.start("worker")

    for page in (ana, ben):
        wait_for_bodies(page, ["before the outage", "sent while the worker was down"], timeout_s=15)
    time.sleep(4)  # any copy still on its way would show by now
    for page in (ana, ben):
        assert bodies(page).count("sent while the worker was down") == 1, bodies(page)
        assert page.locator("#messages .message.pending").count() == 0
        assert page.locator("[data-connection-indicator]").get_attribute("data-state") == "open"
    ana.context.close(), ben.context.close()


def test_dashboard_shows_a_reported_machine_within_two_seconds(browser, stack, sessions):
    page = open_page(browser, stack, sessions["ana"], "/dashboard/")
    live(page)
    wait_for(page, "document.getElementById('last-update').textContent.startsWith('last update')")
    reported_at = time.monotonic()
    report(
        stack,
        "db-07",
        {
            "state": "provisioning",
            "progress": 37,
            "software": [{"name": "postgresql", "state": "installing", "percent": 63}],
        },
    )
    card = page.locator(".machine[data-name='db-07']")
    card.wait_for(timeout=2000)
    assert time.monotonic() - reported_at <= 2
    bar = card.locator("[data-software='postgresql'] [role='progressbar']")
    assert bar.get_attribute("aria-valuenow") == "63"
    assert re.search(r"width:\s*63%", bar.locator(".fill").get_attribute("style"))
    assert card.locator(".badge").inner_text() == "provisioning"
    assert card.locator("[role='progressbar']").first.get_attribute("aria-valuenow") == "37"
    page.context.close()


def test_stale_warning_follows_the_scheduler(browser, stack, sessions):
    page = open_page(browser, stack, sessions["ana"], "/dashboard/")
    live(page)
    warning = page.locator("#stale-warning")
    wait_for(page, "document.getElementById('last-update').textContent.startsWith('last update')")
    assert warning.is_hidden()
    stack.stop("scheduler")
    try:
        warning.wait_for(state="visible", timeout=8000)
    finally:
        stack.start("scheduler")
    warning.wait_for(state="hidden", timeout=8000)
    page.context.close()


def test_screenshots(browser, stack, sessions, tmp_path):
    """Both pages, as a person sees them; written to $SCREENSHOTS_DIR (e.g. docs) when set."""
    target = Path(os.environ.get("SCREENSHOTS_DIR") or tmp_path)
    for index, state in enumerate(["ready", "provisioning", "provisioning", "failed", "pending", "ready"]):
        percent = {"ready": 100, "provisioning": 30 + 20 * index, "failed": 45, "pending": 0}[state]
        report(
            stack,
            f"node-{index + 1:03d}",
            {
                "state": state,
                "software": [
                    {"name": "base-os", "state": "done", "percent": 100},
                    {
                        "name": "nginx",
                        "state": "failed"
                        if state == "failed"
                        else ("done" if percent == 100 else "installing"),
                        "percent": percent,
                    },
                    {
                        "name": "postgresql",
                        "state": "done" if percent == 100 else "queued",
                        "percent": 100 if percent == 100 else 0,
                    },
                ],
            },
        )
    dashboard = open_page(browser, stack, sessions["ana"], "/dashboard/")
    live(dashboard)
    dashboard.locator(".machine[data-name='node-006']").wait_for()
    time.sleep(3)
    dashboard.screenshot(path=str(target / "screenshot-dashboard.png"), full_page=True)

    chat = open_page(browser, stack, sessions["ben"], "/chat/ops/")
    live(chat)
    for text in (
        "node-004 failed on nginx, looking",
        "Shift+Enter gives\na new line",
        "<b>tags</b> stay text",
    ):
        send(chat, text)
    wait_for_bodies(chat, ["<b>tags</b> stay text"])
    chat.screenshot(path=str(target / "screenshot-chat.png"))
    assert (target / "screenshot-chat.png").stat().st_size > 10_000
    dashboard.context.close(), chat.context.close()
