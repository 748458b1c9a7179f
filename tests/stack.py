"""Runs the real Procfile processes against a private Redis, for integration tests.

A :class:`Stack` reads ``Procfile``, runs ``release`` once, then starts ``web``,
``worker`` and ``scheduler`` exactly as written there, each with its own log file,
on a free port, with a Redis server that only it uses and a fresh database: the ``DATABASE_URL``
given in ``env`` (``make_stack`` gives a private one, tests/pg.py), else SQLite in ``workdir``.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import websockets

from project import embedded_redis

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery-staple"


def read_procfile(path: Path = ROOT / "Procfile") -> dict[str, str]:
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


class Stack:
    def __init__(self, workdir: Path, redis_url: str, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = embedded_redis.free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.procfile = read_procfile()
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": "integration-test-secret-key-0123456789-abcdefghijklmnop",
            "SECURE_COOKIES": "0",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "PORT": str(self.port),
            "REDIS_URL": redis_url,
            "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
            # Each pytest-xdist worker collects into its own directory: two `release`s writing one
            # tree at once fail on each other's files. Kept between runs, so collecting is quick.
            "STATIC_ROOT": str(ROOT / "var" / f"test-static-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"),
            **(env or {}),
        }

    # --- processes -------------------------------------------------------------------

    def run_release(self) -> None:
        with self.log("release") as log:
            subprocess.run(
                self.procfile["release"],
                shell=True,
                cwd=ROOT,
                env=self.env,
                check=True,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self, name: str):
        return open(self.workdir / f"{name}.log", "ab")

    def start(self, name: str, label: str | None = None) -> subprocess.Popen:
        """Start Procfile entry ``name`` as process ``label`` (default: the name; ``worker.2``
        for a second worker)."""
        label = label or name
        running = self.processes.get(label)
        assert running is None or running.poll() is not None, f"{label} is already running: stop it first"
        # exec so that signals reach the process itself, not a wrapping shell.
        with self.log(label) as log:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(
                f"exec {self.procfile[name]}",
                shell=True,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.processes[label] = process
        if name == "web":
            self.wait_for_http("/healthz")
        return process

    def send_signal(self, label: str, signum: int) -> None:
        self.processes[label].send_signal(signum)

    def kill(self, label: str) -> None:
        """SIGKILL ``label`` and reap it: no cleanup of any kind runs."""
        process = self.processes.pop(label)
        process.kill()
        process.wait()

    def stop(self, name: str, signum: int = signal.SIGTERM, timeout_s: float = 10) -> int:
        process = self.processes.pop(name)
        if process.poll() is None:
            process.send_signal(signum)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def start_all(self, instances: dict[str, int] | None = None) -> None:
        """``release``, then each process; ``instances`` runs more than one of an entry
        (``{"worker": 2}`` starts ``worker`` and ``worker.2``)."""
        self.run_release()
        for name in ("worker", "scheduler", "web"):
            for n in range(1, (instances or {}).get(name, 1) + 1):
                self.start(name, name if n == 1 else f"{name}.{n}")

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)

    def wait_for_http(self, path: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            web = self.processes["web"]
            if web.poll() is not None:
                raise RuntimeError(f"web exited with {web.returncode}:\n{self.read_log('web')}")
            try:
                urllib.request.urlopen(self.base_url + path, timeout=2).close()
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"web did not answer within {timeout_s} s:\n{self.read_log('web')}")

    def read_log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout

    # --- users and sessions -------------------------------------------------------------

    def create_users(self, *names: str) -> None:
        code = (
            "from django.contrib.auth import get_user_model; User = get_user_model()\n"
            f"for name in {list(names)!r}: User.objects.create_user(name, password={PASSWORD!r})"
        )
        self.manage("shell", "-c", code)

    def login(self, username: str) -> str:
        """Log in through the real login form; the session cookie value."""
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        page = opener.open(self.base_url + "/accounts/login/").read().decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        form = urllib.parse.urlencode(
            {"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token}
        ).encode()
        request = urllib.request.Request(
            self.base_url + "/accounts/login/",
            data=form,
            headers={"Referer": self.base_url + "/accounts/login/"},
        )
        opener.open(request).close()
        cookies = {cookie.name: cookie.value for cookie in jar}
        if "sessionid" not in cookies:
            raise AssertionError(f"login as {username} failed")
        return cookies["sessionid"]

    # --- sockets ----------------------------------------------------------------------------

    def connect(self, path: str, session: str | None = None, origin: str | None = None, **kwargs: Any):
        headers = {"Cookie": f"sessionid={session}"} if session else {}
        return websockets.connect(
            self.ws_url + path,
            origin=origin or self.base_url,
            additional_headers=headers,
            open_timeout=10,
            max_size=None,
            **kwargs,
        )


async def recv_json(ws, timeout_s: float = 5, positions: bool = False) -> dict[str, Any]:
    """The next frame, within ``timeout_s``. ``chat.position`` frames (a room's periodic
    position, docs/protocol.md) are skipped unless ``positions``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        frame = json.loads(await asyncio.wait_for(ws.recv(), max(remaining, 0.01)))
        if positions or frame.get("type") != "chat.position":
            return frame


async def recv_until(ws, frame_type: str, timeout_s: float = 5) -> dict[str, Any]:
    """The next frame of ``frame_type``, skipping others."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        frame = await recv_json(ws, max(remaining, 0.01))
        if frame["type"] == frame_type:
            return frame


async def send_json(ws, frame: dict[str, Any]) -> None:
    await ws.send(json.dumps(frame))
