"""Drive a realistic provisioning run through the real report API.

    python manage.py simulate_fleet --machines 50 --url http://127.0.0.1:8000

Each simulated machine waits in ``pending``, then installs its packages one after
another at its own speed, reporting every second or two as a real agent would; a few
packages fail and take their machine with them. When a wave has finished, the next
one starts after a pause, so a demo dashboard never goes quiet.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from django.conf import settings
from django.core.management.base import BaseCommand

CATALOG = (
    "base-os",
    "kernel-update",
    "openssh",
    "chrony",
    "nginx",
    "postgresql",
    "redis",
    "python3",
    "node-exporter",
    "docker",
    "containerd",
    "kubelet",
    "filebeat",
    "java-17",
)


@dataclass
class SimulatedMachine:
    name: str
    packages: list[dict]
    speed: float  # percent per second while installing
    start_after_s: float
    fails_at: tuple[int, float] | None  # (package index, percent) where it breaks
    state: str = "pending"
    next_report_at: float = 0.0
    reported_final: bool = False
    started_at: float = field(default_factory=time.monotonic)

    @classmethod
    def random(cls, name: str, rng: random.Random, fail_rate: float) -> SimulatedMachine:
        packages = [
            {"name": package, "state": "queued", "percent": 0.0}
            for package in rng.sample(CATALOG, rng.randint(3, 7))
        ]
        fails_at = (rng.randrange(len(packages)), rng.uniform(5, 95)) if rng.random() < fail_rate else None
        return cls(
            name, packages, speed=rng.uniform(4, 25), start_after_s=rng.uniform(0, 8), fails_at=fails_at
        )

    @property
    def finished(self) -> bool:
        return self.state in ("ready", "failed")

    def advance(self, elapsed_s: float, dt_s: float) -> None:
        if self.finished:
            return
        if self.state == "pending":
            if elapsed_s >= self.start_after_s:
                self.state = "provisioning"
            return
        for index, package in enumerate(self.packages):
            if package["state"] == "done":
                continue
            package["state"] = "installing"
            package["percent"] = min(100.0, package["percent"] + self.speed * dt_s)
            if self.fails_at and self.fails_at[0] == index and package["percent"] >= self.fails_at[1]:
                package["state"] = "failed"
                self.state = "failed"
            elif package["percent"] >= 100:
                package["state"] = "done"
            break
        else:
            self.state = "ready"

    def report(self) -> dict:
        progress = sum(p["percent"] for p in self.packages) / len(self.packages)
        return {
            "state": self.state,
            "progress": round(progress, 1),
            "software": [{**package, "percent": round(package["percent"], 1)} for package in self.packages],
        }


class Command(BaseCommand):
    help = "Simulate a fleet of machines being provisioned, reporting through the HTTP API."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--machines", type=int, default=50)
        parser.add_argument("--url", default=f"http://127.0.0.1:{settings.PORT}")
        parser.add_argument("--token", default=settings.FLEET_TOKEN)
        parser.add_argument("--fail-rate", type=float, default=0.08, help="share of machines that fail")
        parser.add_argument("--waves", type=int, default=0, help="provisioning waves to run; 0 runs forever")
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--prefix", default="node")

    def handle(self, *args, **options) -> None:
        rng = random.Random(options["seed"])
        self.url = options["url"].rstrip("/")
        self.token = options["token"]
        wave = 0
        with ThreadPoolExecutor(max_workers=16) as pool:
            while options["waves"] == 0 or wave < options["waves"]:
                wave += 1
                machines = [
                    SimulatedMachine.random(f"{options['prefix']}-{index:03d}", rng, options["fail_rate"])
                    for index in range(1, options["machines"] + 1)
                ]
                self.stdout.write(f"wave {wave}: provisioning {len(machines)} machines at {self.url}")
                self.run_wave(machines, rng, pool)
                failed = sum(machine.state == "failed" for machine in machines)
                self.stdout.write(f"wave {wave} done: {len(machines) - failed} ready, {failed} failed")
                if options["waves"] == 0 or wave < options["waves"]:
                    time.sleep(10)

    def run_wave(
        self, machines: list[SimulatedMachine], rng: random.Random, pool: ThreadPoolExecutor
    ) -> None:
        started = last = time.monotonic()
        while not all(machine.reported_final for machine in machines):
            time.sleep(0.25)
            now = time.monotonic()
            due = []
            for machine in machines:
                machine.advance(now - started, now - last)
                if machine.reported_final or now < machine.next_report_at:
                    continue
                machine.next_report_at = now + rng.uniform(1, 2)
                machine.reported_final = machine.finished
                due.append((machine.name, machine.report()))
            last = now
            list(pool.map(lambda item: self.send(*item), due))

    def send(self, name: str, report: dict) -> None:
        request = urllib.request.Request(
            f"{self.url}/api/machines/{name}/report",
            data=json.dumps(report).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
        )
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except urllib.error.HTTPError as error:
            self.stderr.write(f"{name}: HTTP {error.code} {error.read()[:200]!r}")
        except OSError as error:
            self.stderr.write(f"{name}: {error}")
