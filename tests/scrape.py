"""Reading a metrics endpoint of the real processes, as Prometheus does (docs/operations.md "Metrics")."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from email.message import Message

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple], float]


def get(url: str, token: str | None = None, forwarded_for: str | None = None) -> tuple[int, bytes, Message]:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers


def scrape(url: str, token: str | None = None, timeout_s: float = 10) -> Samples:
    """Every sample at ``url``: ``{(name, sorted labels): value}``. A process that has just
    started may not listen yet: retried until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, body, _ = get(url, token)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert status == 200, body
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def scrape_until(url: str, holds, token: str | None = None, timeout_s: float = 10) -> Samples | None:
    """The first scrape of ``url`` for which ``holds(samples)``, or ``None`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(url, token)
        if holds(samples):
            return samples
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)
