"""HTTPS and the Content-Security-Policy, as production settings give them (project/settings.py
"HTTPS"): ``manage.py check --deploy`` finds nothing, and the real web process behind a TLS
front redirects plain HTTP, sends HSTS on HTTPS, and leaves the probes alone."""

from __future__ import annotations

import http.client
import os
import secrets
import subprocess
import sys

import pytest

from .conftest import make_stack
from .stack import ROOT, Stack

PUBLIC_HOST = "fleet.example.com"
# What operations.md's "Production settings" asks for; nothing about TLS.
PRODUCTION_ENV = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "FLEET_TOKEN": secrets.token_urlsafe(32),
    "ALLOWED_HOSTS": PUBLIC_HOST,
}
TLS_SETTINGS = (
    "SECURE_COOKIES",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SECURE_PROXY_SSL_HEADER",
    "ALLOWED_ORIGINS",
)


def check_deploy(**env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key not in TLS_SETTINGS}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**environment, **PRODUCTION_ENV, **env},
        capture_output=True,
        text=True,
    )


def test_check_deploy_finds_nothing_with_production_settings():
    result = check_deploy()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.parametrize(
    "setting, value, warning",
    [
        ("SECURE_SSL_REDIRECT", "0", "security.W008"),
        ("SECURE_HSTS_SECONDS", "0", "security.W004"),
        ("SECURE_HSTS_INCLUDE_SUBDOMAINS", "0", "security.W005"),
        ("SECURE_COOKIES", "0", "security.W012"),
    ],
)
def test_check_deploy_reports_a_tls_setting_turned_off(setting, value, warning):
    result = check_deploy(**{setting: value})
    assert result.returncode != 0
    assert warning in result.stderr


# --- the real web process, with production's TLS defaults, behind a front that ends TLS ----------


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url):
    # tests/stack.py runs plain HTTP (SECURE_COOKIES=0); this stack runs as production does.
    yield from make_stack(
        tmp_path_factory, redis_url, SECURE_COOKIES="1", ALLOWED_HOSTS=f"127.0.0.1,{PUBLIC_HOST}"
    )


def get(
    stack: Stack, path: str, source_address: str = "127.0.0.1", **headers: str
) -> http.client.HTTPResponse:
    """``GET path`` from ``source_address`` with Host fleet.example.com, redirects not followed."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", stack.port, timeout=10, source_address=(source_address, 0)
    )
    connection.request("GET", path, headers={"Host": PUBLIC_HOST, **headers})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


FROM_THE_FRONT = {"X-Forwarded-Proto": "https"}  # what the front proxy (127.0.0.1) says after TLS


@pytest.mark.integration
def test_plain_http_is_redirected_to_https(stack):
    response = get(stack, "/accounts/login/?next=/chat/")
    assert response.status == 301
    assert response.getheader("Location") == f"https://{PUBLIC_HOST}/accounts/login/?next=/chat/"
    assert response.getheader("Strict-Transport-Security") is None  # never over plain HTTP


@pytest.mark.integration
def test_https_through_the_front_gets_hsts_the_policy_and_secure_cookies(stack):
    response = get(stack, "/accounts/login/", **FROM_THE_FRONT)
    assert response.status == 200
    assert response.getheader("Strict-Transport-Security") == "max-age=31536000; includeSubDomains"
    policy = {
        directive.split()[0]: directive.split()[1:]
        for directive in response.getheader("Content-Security-Policy").split(";")
    }
    assert policy == {
        "default-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
    assert "Secure" in response.getheader("Set-Cookie")


@pytest.mark.integration
def test_a_client_that_is_not_the_front_cannot_claim_https(stack):
    assert get(stack, "/accounts/login/", source_address="127.0.0.2", **FROM_THE_FRONT).status == 301


@pytest.mark.integration
@pytest.mark.parametrize("probe", ["/healthz", "/readyz"])
def test_probes_answer_over_plain_http(stack, probe):
    response = get(stack, probe)
    assert response.status in (200, 503), response.status  # an answer, not a redirect
    assert response.getheader("Content-Type") == "application/json"


@pytest.mark.integration
def test_prometheus_scrapes_the_web_port_over_plain_http(stack):
    response = get(stack, "/metrics")
    assert response.status == 200, response.status
    assert response.getheader("Content-Type").startswith("text/plain")


@pytest.mark.integration
def test_the_agent_api_served_direct_follows_the_same_tls_settings(stack):
    """project/api/direct.py runs the security middleware itself: plain HTTP is redirected, and
    a report over HTTPS from the front gets HSTS (and is then refused for its missing token)."""
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    try:
        connection.request("POST", "/api/reports", body=b"[]", headers={"Host": PUBLIC_HOST})
        plain = connection.getresponse()
        plain.read()
        connection.request(
            "POST", "/api/reports", body=b"[]", headers={"Host": PUBLIC_HOST, **FROM_THE_FRONT}
        )
        secure = connection.getresponse()
        secure.read()
    finally:
        connection.close()

    assert plain.status == 301
    assert plain.getheader("Location") == f"https://{PUBLIC_HOST}/api/reports"
    assert secure.status == 401
    assert secure.getheader("Strict-Transport-Security") == "max-age=31536000; includeSubDomains"
