"""nginx in front of the web process, as in production: deploy/nginx/fleetchat.conf.template.

:class:`Front` renders the template (the same ``${NAME}`` placeholders operators fill with
envsubst) and runs nginx as an unprivileged foreground process whose pid, temp files and log
all live in one directory.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from project import embedded_redis

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "nginx" / "fleetchat.conf.template"
# Debian installs nginx in /usr/sbin, which is not on an ordinary user's PATH.
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

# ``${NAME}`` only: nginx's own variables (``$remote_addr``) are written without braces.
PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")


def render(template: str, values: Mapping[str, object]) -> str:
    """``template`` with every ``${NAME}`` replaced by ``values[NAME]``; a missing one is an error."""
    missing = sorted(set(PLACEHOLDER.findall(template)) - values.keys())
    if missing:
        raise KeyError(f"no value for {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), template)


class Front:
    """nginx on a free loopback port, proxying to the web process at ``upstream`` (host:port)."""

    def __init__(
        self, workdir: Path, upstream: str, conn_per_address: int = 100, worker_connections: int = 1024
    ) -> None:
        self.workdir = workdir
        self.port = embedded_redis.free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.values = {
            "LISTEN": f"127.0.0.1:{self.port}",
            "UPSTREAM": upstream,
            "CONN_PER_ADDRESS": conn_per_address,
            "WORKER_CONNECTIONS": worker_connections,
        }
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10) -> None:
        config = self.workdir / "front.conf"
        config.write_text(render(TEMPLATE.read_text(), self.values))
        with open(self.workdir / "front.log", "ab") as log:
            self.process = subprocess.Popen(
                [NGINX, "-p", f"{self.workdir}/", "-c", str(config), "-g", "daemon off;"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.read_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen within {timeout_s} s:\n{self.read_log()}")

    def stop(self, timeout_s: float = 10) -> None:
        """SIGTERM: nginx's fast stop (a graceful one would wait for every open socket)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def read_log(self) -> str:
        path = self.workdir / "front.log"
        return path.read_text(errors="replace") if path.exists() else ""
