"""Who may read /metrics with the default settings, and what one socket's outbox counts.

tests/test_metrics.py scrapes the real processes with a token set; here the view itself, with
the defaults an operator gets: loopback only, no token.
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from django.test import RequestFactory
from prometheus_client import REGISTRY

from consumers.outbox import Outbox
from project.api.metrics import metrics_view


@pytest.fixture
def private_redis(settings, redis_url):
    settings.REDIS_URL = redis_url  # the queue depths are read on each scrape


@pytest.mark.parametrize(
    ("address", "allowed", "status"),
    [
        ("127.0.0.1", "127.0.0.1,::1", 200),
        ("::1", "127.0.0.1,::1", 200),
        ("::ffff:127.0.0.1", "127.0.0.1,::1", 200),
        ("10.1.2.3", "127.0.0.1,::1", 403),
        ("10.1.2.3", "10.0.0.0/8", 200),
        ("", "127.0.0.1,::1", 403),
    ],
)
def test_the_default_serves_loopback_only(settings, private_redis, address, allowed, status):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOW_IPS = [ipaddress.ip_network(item) for item in allowed.split(",")]
    response = metrics_view(RequestFactory().get("/metrics", REMOTE_ADDR=address))
    assert response.status_code == status
    if status == 200:
        assert b"fleetchat_channel_queue_messages" in response.content
        assert b"fleetchat_frames_delivered_total" in response.content
    else:
        assert response["Content-Type"] == "application/json"


def test_a_token_is_compared_whole(settings, private_redis):
    settings.METRICS_TOKEN = "s3cret-token"
    request = RequestFactory().get
    assert (
        metrics_view(
            request("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION="Bearer s3cret-token")
        ).status_code
        == 200
    )
    for header in ("Bearer s3cret", "Bearer s3cret-token-and-more", "Basic s3cret-token", ""):
        response = metrics_view(request("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION=header))
        assert (response.status_code, response["WWW-Authenticate"]) == (401, 'Bearer realm="metrics"')


def test_only_get(private_redis):
    response = metrics_view(RequestFactory().post("/metrics", REMOTE_ADDR="127.0.0.1"))
    assert (response.status_code, response["Allow"]) == (405, "GET")


def counted(name: str, kind: str) -> float:
    return REGISTRY.get_sample_value(name, {"kind": kind}) or 0.0


async def test_an_outbox_counts_what_it_writes_and_what_it_drops():
    written: list[str] = []

    async def write(text: str) -> None:
        written.append(text)

    delivered, dropped = (
        counted("fleetchat_frames_delivered_total", "unit"),
        counted("fleetchat_frames_dropped_total", "unit"),
    )
    outbox = Outbox(write, on_overflow=lambda _: None, max_frames=100, max_bytes=10**6, kind="unit")
    for text in ("a", "b", "c"):
        outbox.put(text)
    outbox.start()
    for _ in range(5):
        await asyncio.sleep(0)
    outbox.writer.cancel()
    await asyncio.sleep(1.2)  # written frames reach the counter within a second (metrics.Tally)
    for text in ("d", "e"):
        outbox.put(text)
    assert outbox.shut_down() == 2
    assert written == ["a", "b", "c"]
    assert counted("fleetchat_frames_delivered_total", "unit") - delivered == 3
    assert counted("fleetchat_frames_dropped_total", "unit") - dropped == 2
