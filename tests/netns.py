"""Several "hosts" on one machine: Linux network namespaces on a private bridge, for tests.

A :class:`Network` makes one namespace per host, each with an ``eth0`` on a bridge that lives
in a namespace of its own (the switch), addresses in ``SUBNET``. Nothing is created in the
machine's own namespace, so nothing a test does here can reach or disturb the machine's
network, and two runs at once do not meet. Processes run inside a host with
``ip netns exec``; the test process reaches a host from a thread that has entered another
host's namespace (:meth:`Host.call`). :meth:`Host.cut_off` drops, with nftables, every packet
between a host and one address, as a partition or a firewall would: no error, just silence.

Everything is removed on :meth:`Network.close`, even after a failure: every process in a
namespace is killed, then the namespaces (and with them the links) are deleted. Namespaces a
killed test run left behind are removed by the next run.

Needs root, ``ip`` (iproute2) and ``nft`` (Debian's ``nftables``); :func:`unavailable` says
why not when something is missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

SUBNET = "10.231.0"
PREFIX = "fcmh"  # namespaces are named fcmh<pid>-<host>
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

T = TypeVar("T")


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"`{tool}` not found: install Debian's {package} package"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        ip("netns", "add", probe)
        subprocess.run(
            ["ip", "netns", "exec", probe, "nft", "add", "table", "inet", "probe"],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as error:
        return f"cannot create a network namespace with a firewall table: {error.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def remove_leftovers() -> None:
    """Delete namespaces of earlier runs whose test process is gone (a SIGKILLed pytest)."""
    for line in ip("netns", "list").splitlines():
        match = re.match(rf"({PREFIX}(\d+)-\S+)", line)
        if match and not Path(f"/proc/{match.group(2)}").exists():
            kill_everything_in(match.group(1))
            subprocess.run(["ip", "netns", "del", match.group(1)], capture_output=True)


def kill_everything_in(namespace: str) -> None:
    pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def enter(namespace: str) -> None:
    """Move the calling thread (only it) into ``namespace``'s network."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / namespace, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace} failed")
    finally:
        os.close(fd)


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
        """Run ``argv`` on this host (``ip netns exec`` execs it: the pid is the program's)."""
        with open(log, "ab") as out:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, *argv],
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.processes.append(process)
        return process

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a thread inside this host's network; its result or its error."""
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                enter(self.namespace)
                outcome["result"] = function(*args)
            except BaseException as error:  # handed to the caller
                outcome["error"] = error

        thread = threading.Thread(target=run, name=f"in-{self.name}", daemon=True)
        thread.start()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def cut_off(self, peer: str) -> None:
        """Drop every packet between this host and ``peer``, both ways (DROP, not REJECT)."""
        rules = (
            "table inet partition {\n"
            f"  chain out {{ type filter hook output priority 0; ip daddr {peer} drop; }}\n"
            f"  chain in {{ type filter hook input priority 0; ip saddr {peer} drop; }}\n"
            "}\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", self.namespace, "nft", "-f", "-"], input=rules, text=True, check=True
        )

    def heal(self) -> None:
        subprocess.run(
            ["ip", "netns", "exec", self.namespace, "nft", "delete", "table", "inet", "partition"], check=True
        )


class Network:
    """Hosts on one bridge: ``Network(["redis", "web1", ...])``, host n at ``SUBNET.<n+1>``."""

    def __init__(self, host_names: list[str]) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.tag}-switch"
        self.hosts: dict[str, Host] = {}
        remove_leftovers()
        try:
            ip("netns", "add", self.switch)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            for number, name in enumerate(host_names, start=1):
                self.add_host(name, f"{SUBNET}.{number}")
        except BaseException:
            self.close()
            raise

    def add_host(self, name: str, address: str) -> None:
        host = self.hosts[name] = Host(name, f"{self.tag}-{name}", address)
        port = f"p-{name}"[:15]  # the host's port on the bridge (interface names: 15 bytes)
        ip("netns", "add", host.namespace)
        ip(
            "-n",
            self.switch,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            host.namespace,
        )
        ip("-n", self.switch, "link", "set", port, "master", "br0")
        ip("-n", self.switch, "link", "set", port, "up")
        ip("-n", host.namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", host.namespace, "link", "set", "eth0", "up")
        ip("-n", host.namespace, "link", "set", "lo", "up")

    def close(self) -> None:
        """Stop every process on every host, then delete the namespaces and their links."""
        for host in self.hosts.values():
            for process in host.processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for host in self.hosts.values():
            for process in host.processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(max(0.1, deadline - time.monotonic()))
        for namespace in [host.namespace for host in self.hosts.values()] + [self.switch]:
            kill_everything_in(namespace)  # children the programs started, and the stubborn
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        for host in self.hosts.values():
            for process in host.processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(5)
