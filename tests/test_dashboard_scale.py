"""The dashboard in Chromium with a fleet of 10,000 machines, the page's machines reporting.

The fleet is loaded with ``manage.py loadfleet`` (``node-00001`` .. ``node-10000``); a thread
reports every machine of the first page once a second through the API while the page is
measured. The page reads its own books (``window.fleetDashboard.stats``: frames applied, the
time each took to render, resyncs, the first paint after the socket opened) and the test
reads what crossed the socket (Playwright's frame events) for the bytes.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from project import protocol

from . import csp
from .conftest import make_stack
from .stack import Stack
from .test_browser import browser, live, open_page, wait_for  # noqa: F401 (the browser fixture)

pytestmark = pytest.mark.browser

TOKEN = "scale-test-token-7e6d5c"
FLEET = 10_000
WATCH_S = 20


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url):
    yield from make_stack(tmp_path_factory, redis_url, FLEET_TOKEN=TOKEN, OFFLINE_AFTER="3600")


@pytest.fixture(scope="module")
def session(stack: Stack) -> str:
    stack.create_users("operator")
    session = stack.login("operator")
    stack.manage("loadfleet", "--machines", str(FLEET), "--prefix", "node")
    # In a thread of its own: Playwright's sync API runs an event loop in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, published(stack, session)).result()
    return session


async def published(stack: Stack, session: str, timeout_s: float = 60) -> None:
    """Until an update has carried the loaded fleet (the summary counts it)."""
    async with stack.connect("/ws/status/?page=1", session) as ws:
        async with asyncio.timeout(timeout_s):
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == protocol.STATUS_UPDATE and frame["summary"]["machines"] == FLEET:
                    return


class FirstPageReports:
    """Reports every machine of the first page once a second, each time a little further on."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> FirstPageReports:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)

    def run(self) -> None:
        second = 0
        while not self.stop.is_set():
            started = time.monotonic()
            second += 1
            for index in range(1, protocol.STATUS_PAGE_SIZE + 1):
                body = {
                    "state": "provisioning",
                    "progress": (second + index) % 100,
                    "software": [
                        {"name": "base-os", "state": "installing", "percent": (second * 3 + index) % 100}
                    ],
                }
                request = urllib.request.Request(
                    f"{self.stack.base_url}/api/machines/node-{index:05d}/report",
                    data=json.dumps(body).encode(),
                    method="POST",
                    headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
                )
                urllib.request.urlopen(request, timeout=5).close()
                self.sent += 1
            self.stop.wait(max(0.0, 1 - (time.monotonic() - started)))


def socket_bytes(page) -> dict[str, list[int]]:
    """Sizes of the status frames the page receives, by type, from now on."""
    sizes: dict[str, list[int]] = {"status.snapshot": [], "status.update": []}

    def on_socket(ws) -> None:
        def on_frame(payload) -> None:
            text = payload if isinstance(payload, str) else payload.decode()
            for frame_type in sizes:
                if text.startswith(f'{{"type":"{frame_type}"'):
                    sizes[frame_type].append(len(text.encode()))

        ws.on("framereceived", on_frame)

    page.on("websocket", on_socket)
    return sizes


def dashboard_stats(page) -> dict:
    return page.evaluate("() => ({...window.fleetDashboard.stats})")


def test_the_dashboard_with_10000_machines_paints_fast_and_keeps_up(browser, stack, session):
    with FirstPageReports(stack) as reports:
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        csp.watch(context)
        context.add_cookies([{"name": "sessionid", "value": session, "url": stack.base_url}])
        page = context.new_page()
        sizes = socket_bytes(page)
        page.goto(stack.base_url + "/dashboard/")
        live(page)
        wait_for(page, "window.fleetDashboard.stats.firstPaintMs !== null")
        first = dashboard_stats(page)
        time.sleep(WATCH_S)
        last = dashboard_stats(page)
        cards = page.locator("#machines .machine").count()
        total = page.locator("#count-total").inner_text()
        label = page.locator("#page-label").inner_text()
        context.close()

    render_ms = last["renderMs"]
    updates_per_s = (last["updates"] - first["updates"]) / WATCH_S
    update_bytes = sizes["status.update"]
    print(
        f"\n10,000 machines: first paint {first['firstPaintMs']:.0f} ms after the socket opened; "
        f"snapshot {sizes['status.snapshot']} B; {updates_per_s:.2f} updates/s applied, "
        f"resyncs {last['resyncs']} (server {last['serverResyncs']}); render ms p50 "
        f"{statistics.median(render_ms):.1f} p99 {sorted(render_ms)[int(len(render_ms) * 0.99) - 1]:.1f} "
        f"max {max(render_ms):.1f}; update bytes mean {statistics.fmean(update_bytes):.0f} "
        f"({sum(update_bytes) / WATCH_S:.0f} B/s); {reports.sent} reports sent"
    )
    assert first["firstPaintMs"] <= 2000
    assert cards == protocol.STATUS_PAGE_SIZE and total == str(FLEET)
    assert label == f"Page 1 of {FLEET // protocol.STATUS_PAGE_SIZE} · {FLEET} machines"
    assert last["resyncs"] == 0 and last["serverResyncs"] == 0, "the page missed updates"
    assert updates_per_s >= 0.9
    assert max(sizes["status.snapshot"]) < 100_000  # a page of the fleet, not the fleet


def test_filters_and_pages_go_through_the_view(browser, stack, session):
    page = open_page(browser, stack, session, "/dashboard/")
    live(page)
    page.locator(".machine[data-name='node-00100']").wait_for()

    page.click("#page-next")
    page.locator(".machine[data-name='node-00101']").wait_for()
    assert page.locator("#machines .machine").first.get_attribute("data-name") == "node-00101"
    assert page.evaluate("location.hash") == "#page=2"

    page.select_option("#filter-state", "failed")
    # The pager says "Page 1" as soon as the filter is chosen, while page 2's cards still show;
    # the count it gives is the view's only once the failed machines' snapshot has arrived.
    wait_for(
        page,
        "document.getElementById('page-label').textContent.startsWith('Page 1 of')"
        f" && !document.getElementById('page-label').textContent.endsWith('· {FLEET} machines')",
    )
    wait_for(page, "document.querySelectorAll('#machines .machine').length > 0")
    states = page.locator("#machines .machine").evaluate_all(
        "cards => cards.map((card) => card.dataset.state)"
    )
    assert set(states) == {"failed"}

    page.select_option("#filter-state", "")
    page.fill("#filter-name", "NODE-0999")
    wait_for(page, "document.getElementById('page-label').textContent.endsWith('· 10 machines')")
    names = page.locator("#machines .machine").evaluate_all("cards => cards.map((card) => card.dataset.name)")
    assert names == [f"node-0999{digit}" for digit in range(10)]

    page.fill("#filter-name", "no such machine")  # a space: no name can contain it
    assert page.evaluate("document.getElementById('filter-name').validity.valid") is False
    assert page.locator("#count-total").inner_text() == str(FLEET)  # the summary stays live
    page.context.close()
