"""Settings, read once from the environment (12-factor).

Every knob an operator can turn is an environment variable read here and nowhere else;
the rest of the code reads ``django.conf.settings``. Development gets safe defaults;
production (``DJANGO_DEBUG=0``) fails fast when a secret is missing.
"""

import ipaddress
import os
import socket
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from project.redis_connections import redis_reconnect_once

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1 or 0)")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG=0 "
            "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))')"
        )
    SECRET_KEY = "dev-only-insecure-secret-key-do-not-use-in-production"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
PORT = env_int("PORT", 8000)
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# Redis behind Sentinel: "host:port,host:port,..." of the Sentinels and the master's name.
# When set, every client (the channel layer's too) asks them for the master and follows a
# failover; REDIS_URL then only gives the database number (its path, /0 by default).
REDIS_SENTINELS = [
    (host, int(port)) for host, _, port in (item.rpartition(":") for item in env_list("REDIS_SENTINELS", ""))
]
REDIS_SENTINEL_MASTER = os.environ.get("REDIS_SENTINEL_MASTER", "mymaster")
REDIS_DB = int(urlparse(REDIS_URL).path.lstrip("/") or 0)
ALLOW_ANONYMOUS = env_bool("ALLOW_ANONYMOUS", False)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    # Before channels: workers' runworker (workers/runner.py) replaces Channels' own.
    "workers",
    "channels",
    "scheduler",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Errors Django answers in HTML before a view runs are JSON under /api/, /healthz, /readyz.
    "project.api.errors.json_answers",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "project" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database (docs/operations.md "The database") ------------------------------------------


def database_settings(url: str, conn_max_age: int) -> dj_database_url.DBConfig:
    """``DATABASES["default"]`` for a ``DATABASE_URL`` (the tests build theirs with this too)."""
    database = dj_database_url.parse(url, conn_max_age=conn_max_age, conn_health_checks=True)
    if database["ENGINE"] == "django.db.backends.sqlite3":
        # WAL and a busy timeout, so that the workers' writes and the web processes' reads
        # (sessions) do not trip over each other; IMMEDIATE takes the write lock at BEGIN.
        database["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    else:
        # A server that does not answer must fail a request or a readiness check in seconds,
        # not hang it for the kernel's TCP timeout.
        database.setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
    return database


# Each thread that queries keeps its connection for DB_CONN_MAX_AGE seconds (0: one per
# request or message), checked before reuse after an error (CONN_HEALTH_CHECKS), so that a
# database restart costs one failed query at most. A web process's handshakes and session checks
# share one thread (so one connection); its HTTP requests run in a thread each, whose connection
# project/database_connections.py closes when the request ends. Opening a connection per WebSocket
# handshake was a visible share of the web process's time under a reconnect wave (py-spy).
DB_CONN_MAX_AGE = max(0, env_int("DB_CONN_MAX_AGE", 600))
DATABASES = {
    "default": database_settings(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}", DB_CONN_MAX_AGE
    )
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# --- Login throttling (django-axes; docs/operations.md "Login lockout") ------------------
# Failed logins at the site's form and the admin's are counted in the database (shared by
# every web process, kept across restarts). From its LOGIN_FAILURE_LIMIT-th failure on, a client
# address is refused with 429 and registration/lockout.html until LOGIN_COOLOFF_S have passed
# since its last attempt (each attempt while locked out starts the wait again). Unlock sooner
# with ``manage.py axes_reset_ip <address>``, ``axes_reset_username <name>`` or ``axes_reset``.
# Only the login views authenticate with a password: sockets (project/socket_auth.py) read the
# session and the report API checks its bearer token, so a lockout never reaches either.
INSTALLED_APPS += ["axes"]
# Last, as axes requires: it turns the backend's refusal into the lockout page.
MIDDLEWARE += ["axes.middleware.AxesMiddleware"]
AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out client before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    # Sockets check a session's backend against this list (project/socket_auth.py).
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = max(1, env_int("LOGIN_FAILURE_LIMIT", 5))
AXES_COOLOFF_TIME = timedelta(seconds=max(1, env_int("LOGIN_COOLOFF_S", 900)))
# Two budgets, either of which locks out: a client address, whatever usernames it tries (bounds
# spraying a few passwords over many accounts), and a username, from whatever addresses (bounds
# guessing one account from a botnet). The price of the second: anyone can keep a named user from
# logging in for LOGIN_COOLOFF_S by failing on purpose; their sessions and sockets stay open, and
# an admin lifts it with ``axes_reset_username``. People behind one NAT share the first budget.
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
# A success does not wipe the address's failures: otherwise an attacker holding one account
# could log into it every few guesses and spray the others without limit.
AXES_RESET_ON_SUCCESS = False
# The address is REMOTE_ADDR, which uvicorn (--proxy-headers) takes from X-Forwarded-For only
# when the connection comes from FORWARDED_ALLOW_IPS (default 127.0.0.1, the front proxy).
# Axes reads it alone unless django-ipware is installed; this keeps ipware to it too.
AXES_IPWARE_META_PRECEDENCE_ORDER = ("REMOTE_ADDR",)
AXES_LOCKOUT_TEMPLATE = "registration/lockout.html"
# Usernames as sent, cut to the column and without NULs (PostgreSQL refuses either).
AXES_USERNAME_CALLABLE = "project.login_names.attempted_username"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Where `release` collects the static files to (served by WhiteNoise from there).
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT") or BASE_DIR / "staticfiles")
STATICFILES_DIRS = [BASE_DIR / "project" / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "project.storage.StaticStorage"
        )
    },
}

# Django's database sessions, refusing a session key with a NUL (project/session_store.py).
SESSION_ENGINE = "project.session_store"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SAMESITE = "Lax"

# --- HTTPS (docs/operations.md "TLS") -------------------------------------------------------
# In production the site is served over HTTPS only, TLS ending at the front proxy; uvicorn takes
# the scheme from the proxy's X-Forwarded-Proto (from FORWARDED_ALLOW_IPS only). SECURE_COOKIES=0
# is for plain-HTTP test rigs: it also turns the redirect to HTTPS and HSTS off unless set.
SERVED_OVER_HTTPS = not DEBUG and env_bool("SECURE_COOKIES", True)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SERVED_OVER_HTTPS
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", SERVED_OVER_HTTPS)
# Probes and Prometheus reach the web port over plain HTTP from the proxy, the orchestrator or the
# private network (/metrics answers only METRICS_ALLOW_IPS): never redirected.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
# Sent on HTTPS answers only. Browsers then refuse plain HTTP to the host (and its subdomains)
# for this long: lower it (e.g. 3600) for a first deployment, raise it once HTTPS is proven.
SECURE_HSTS_SECONDS = max(0, env_int("SECURE_HSTS_SECONDS", 31_536_000 if SERVED_OVER_HTTPS else 0))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
if not SECURE_HSTS_PRELOAD:
    # Preloading is the domain owner's commitment (hstspreload.org, slow to undo), not a default:
    # check --deploy's reminder of it (W021) stays quiet until SECURE_HSTS_PRELOAD=1.
    SILENCED_SYSTEM_CHECKS = ["security.W021"]
# "Header-Name,value" for a proxy that marks HTTPS otherwise than X-Forwarded-Proto. Django trusts
# it from any client, so the proxy must set or strip it on every request; sockets read it too.
proxy_ssl_header = env_list("SECURE_PROXY_SSL_HEADER", "")
if proxy_ssl_header and len(proxy_ssl_header) != 2:
    raise ImproperlyConfigured(
        "SECURE_PROXY_SSL_HEADER must be 'Header-Name,value', e.g. 'X-Forwarded-Ssl,on'"
    )
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + proxy_ssl_header[0].upper().replace("-", "_"), proxy_ssl_header[1])
    if proxy_ssl_header
    else None
)
# Origins other than the one a request is addressed to (scheme://host[:port]) that may open sockets
# (project/socket_origin.py) and post forms: for a proxy that changes the Host or ends TLS unsaid.
ALLOWED_ORIGINS = env_list("ALLOWED_ORIGINS", "")
CSRF_TRUSTED_ORIGINS = ALLOWED_ORIGINS

# Content-Security-Policy (django-csp): pages load scripts, styles, images and sockets from their
# own origin only; no inline script or style, no eval. 'self' covers ws: and wss: to the page's own
# host and port (CSP Level 3); tests/test_browser.py fails a test on any violation.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}
INSTALLED_APPS += ["csp"]

# --- Channels -------------------------------------------------------------------------

# The core layer's queue semantics (one reader per message) are what workers need.
# ``capacity`` bounds every channel's queue; past it the layer refuses sends to a
# channel (ChannelFull) and silently drops group deliveries, so it is sized for bursts.
CHANNEL_CAPACITY = env_int("CHANNEL_CAPACITY", 1000)
# Every consumer channel of a web process ("specific.<process>!<socket>") shares one queue
# in Redis, so that queue's capacity is the whole process's backlog, not one socket's: with
# 1,000, a burst of 5,000 handshakes (a snapshot each) made the layer drop whole status
# updates for every socket of the process (bench S1: 14,455 missed seq; 0 with 20,000).
# Messages still expire after ``expiry``.
PROCESS_CHANNEL_CAPACITY = env_int("PROCESS_CHANNEL_CAPACITY", 20000)
# A web process that has heard nothing from Redis for this long closes its sockets (1011) and
# refuses new ones until Redis answers (consumers/redis_watch.py): its clients go elsewhere or
# come back whole, instead of waiting on a process that is cut off.
REDIS_LOST_AFTER_S = max(1, env_int("REDIS_LOST_AFTER_S", 3))
# The channel layer's connections: the kernel probes an idle one every second, and gives up on
# one whose probes or data stay unacknowledged for REDIS_LOST_AFTER_S; the command waiting on it
# fails (ConnectionError) and the process reconnects. Without it every command on a silent
# connection waited out socket_timeout (15 s, above the layer's 5 s blocking pops) first.
REDIS_TCP_KEEPALIVE = {
    option: value
    for option, value in (
        (getattr(socket, "TCP_KEEPIDLE", None), 1),
        (getattr(socket, "TCP_KEEPINTVL", None), 1),
        (getattr(socket, "TCP_KEEPCNT", None), REDIS_LOST_AFTER_S),
        (getattr(socket, "TCP_USER_TIMEOUT", None), REDIS_LOST_AFTER_S * 1000),  # Linux only
    )
    if option is not None
}
REDIS_LAYER_HOST = {
    "max_connections": env_int("REDIS_MAX_CONNECTIONS", 1000),
    # redis-py 8 reads with a 5 s socket timeout by default, the same as the layer's 5 s
    # BZPOPMIN: an idle receive then dies with TimeoutError and takes its consumer with it.
    # Read longer than any blocking pop.
    "socket_timeout": 15,
    # A dead server must not hold a connect up for long: processes retry with backoff.
    "socket_connect_timeout": 2,
    # A server that stops answering without closing (a partition, a firewall dropping packets)
    # fails a command in ~REDIS_LOST_AFTER_S instead of socket_timeout: see REDIS_TCP_KEEPALIVE.
    "socket_keepalive": True,
    "socket_keepalive_options": REDIS_TCP_KEEPALIVE,
    # A pooled connection to a Redis that restarted or failed over is dead, and redis-py finds out
    # only when a command fails on it ("Connection closed by server."), seconds after the server
    # is back: a join forwarded then closed its socket with 1011. One immediate retry on a fresh
    # connection; not on timeouts, so a partition is noticed no later.
    "retry": redis_reconnect_once(asynchronous=True),
}
if REDIS_SENTINELS:
    REDIS_LAYER_HOST.update(
        sentinels=REDIS_SENTINELS,
        master_name=REDIS_SENTINEL_MASTER,
        sentinel_kwargs={"socket_timeout": 0.5},
        db=REDIS_DB,
    )
else:
    REDIS_LAYER_HOST["address"] = REDIS_URL
# Every key the channel layer writes in Redis starts with this (the metrics read its queues).
CHANNEL_LAYER_PREFIX = "fleetchat"
CHANNEL_LAYERS: dict[str, dict[str, Any]] = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [REDIS_LAYER_HOST],
            "prefix": CHANNEL_LAYER_PREFIX,
            "capacity": CHANNEL_CAPACITY,
            "channel_capacity": {"specific.*": PROCESS_CHANNEL_CAPACITY},
            "expiry": 60,
            "group_expiry": 86400,
        },
    },
}
# Group traffic (broadcasts to sockets) may ride Redis pub/sub instead: GROUP_LAYER=pubsub adds
# a "groups" alias on channels_redis.pubsub for group_add / group_send / the web processes'
# group channels only; worker channels stay on the core layer, whose queues they need.
# Measured against the core layer in docs/performance.md.
GROUP_LAYER = os.environ.get("GROUP_LAYER", "core")
if GROUP_LAYER not in ("core", "pubsub"):
    raise ImproperlyConfigured(f"GROUP_LAYER must be core or pubsub, not {GROUP_LAYER!r}")
GROUP_LAYER_ALIAS = "groups" if GROUP_LAYER == "pubsub" else "default"
if GROUP_LAYER == "pubsub":
    CHANNEL_LAYERS["groups"] = {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {
            "hosts": [
                {
                    key: value
                    for key, value in REDIS_LAYER_HOST.items()
                    if not key.startswith(("max_", "socket_"))
                }
            ],
            "prefix": CHANNEL_LAYER_PREFIX,
        },
    }

# Each socket's outgoing queue (consumers/outbox.py): past either bound a status socket
# drops what waits and is resynced, a chat socket is closed (4008) and resumes.
SOCKET_QUEUE_MAX_FRAMES = max(1, env_int("SOCKET_QUEUE_MAX_FRAMES", 256))
SOCKET_QUEUE_MAX_BYTES = max(1, env_int("SOCKET_QUEUE_MAX_BYTES", 1024 * 1024))

# Fair shares (consumers/limits.py): sockets one user may hold open across every web process,
# and handshakes one user may make per second. Guests are counted by client address.
SOCKETS_PER_USER_MAX = max(1, env_int("SOCKETS_PER_USER_MAX", 50))
JOINS_PER_USER_PER_S = max(1, env_int("JOINS_PER_USER_PER_S", 10))
# Per socket, per class of client frame (project/protocol.py EDGE_LIMITED): (burst, per second).
# Messages: a person types far slower; reads (history pages, resumes, resyncs) cost a query each.
EDGE_LIMITS = {
    "messages": (max(1, env_int("EDGE_MESSAGES_BURST", 20)), max(1, env_int("EDGE_MESSAGES_PER_S", 5))),
    "reads": (max(1, env_int("EDGE_READS_BURST", 5)), max(1, env_int("EDGE_READS_PER_S", 1))),
}
# Sockets follow their session (consumers/sessions.py): a logout closes its sockets at once; each
# web process also re-checks every session its sockets hold this often (one batched query) and
# closes those that expired, or whose user changed password or was deactivated or deleted.
SESSION_CHECK_EVERY_S = max(1, env_int("SESSION_CHECK_EVERY_S", 5))

# --- Chat -------------------------------------------------------------------------------

CHAT_MESSAGE_MAX_CHARS = env_int("CHAT_MESSAGE_MAX_CHARS", 2000)
CHAT_RATE_LIMIT_COUNT = env_int("CHAT_RATE_LIMIT_COUNT", 20)
CHAT_RATE_LIMIT_WINDOW_S = env_int("CHAT_RATE_LIMIT_WINDOW_S", 10)

# --- Fleet status -------------------------------------------------------------------------

# The agents' shared secret for the report API. Development gets a fixed token;
# production must set its own.
FLEET_TOKEN = os.environ.get("FLEET_TOKEN", "")
if not FLEET_TOKEN and DEBUG:
    FLEET_TOKEN = "dev-fleet-token"
OFFLINE_AFTER = env_int("OFFLINE_AFTER", 30)
SCHEDULER_STALE_AFTER_S = env_int("SCHEDULER_STALE_AFTER_S", 3)
# The clock's lease (scheduler/lease.py): any number of schedulers may run, one leads.
# A dead leader's lease lapses after this long and a standby takes over; the leader renews
# it six times per TTL. Failover costs about TTL + 1 s between two updates (docs/reliability.md).
SCHEDULER_LEASE_TTL_MS = max(300, env_int("SCHEDULER_LEASE_TTL_MS", 1500))
# Reports answered 202 wait in a Redis stream until a status worker has applied them; past
# this many waiting the API answers 503 server_busy instead of queueing more.
REPORTS_QUEUE_MAX = max(1, env_int("REPORTS_QUEUE_MAX", 100_000))
# While single reports keep arriving, a web process holds each append to the stream this long
# to take the reports that come meanwhile with it (project/reportqueue.py, Together). A report
# waits for the next tick anyway; 0 sends each call as soon as the previous one is answered.
REPORTS_LINGER_MS = max(0, env_int("REPORTS_LINGER_MS", 10))

# --- Metrics (project/metrics.py; docs/operations.md "Metrics") -------------------------------
# Web serves /metrics on its own port; each worker and scheduler process on METRICS_PORT (0: none)
# at METRICS_BIND, so two of them on one host need two ports. Every one of these answers only
# clients in METRICS_ALLOW_IPS (addresses or networks) and, with METRICS_TOKEN set, only those
# that also send it as a bearer token.
METRICS_PORT = max(0, env_int("METRICS_PORT", 0))
METRICS_BIND = os.environ.get("METRICS_BIND", "127.0.0.1")
try:
    METRICS_ALLOW_IPS = [
        ipaddress.ip_network(item, strict=False) for item in env_list("METRICS_ALLOW_IPS", "127.0.0.1,::1")
    ]
except ValueError as error:
    raise ImproperlyConfigured(
        f"METRICS_ALLOW_IPS: {error} (use addresses or networks, e.g. 10.0.0.0/8)"
    ) from None
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
# Web's processes share their numbers through files here, in a directory per uvicorn master.
PROMETHEUS_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or str(
    Path(tempfile.gettempdir()) / f"fleetchat-metrics-{os.getuid()}"
)

# --- Logging ----------------------------------------------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"daphne": {"level": "WARNING"}, "django.channels.server": {"level": "WARNING"}},
}
