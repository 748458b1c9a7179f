"""Insert a large fleet at once, for tests and benchmarks of fleets of thousands of machines.

    python manage.py loadfleet --machines 10000 --prefix node

Reporting 10,000 machines through the API takes a while; this writes them (with their
packages) in a few bulk statements, then announces them to the status feed as changed, so
that the next update carries them and every dashboard and view sees them as usual.
"""

from __future__ import annotations

import random

from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from project import redis_connections
from workers.feed import FeedStore
from workers.models import Machine, Software

from .simulate_fleet import CATALOG

# Ready and failed machines stay as they are; pending and provisioning ones go offline once
# silent for OFFLINE_AFTER, as a real fleet's would.
STATE_WEIGHTS = {"ready": 6, "provisioning": 2, "pending": 1, "failed": 1}
PACKAGE_STATE = {"ready": "done", "provisioning": "installing", "pending": "queued", "failed": "failed"}
BATCH = 2000


class Command(BaseCommand):
    help = "Insert N machines with their packages at once and announce them to the status feed."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--machines", type=int, required=True)
        parser.add_argument("--prefix", default="node")
        parser.add_argument("--seed", type=int, default=11)

    def handle(self, *args, **options) -> None:
        rng = random.Random(options["seed"])
        width = len(str(options["machines"]))
        names = [f"{options['prefix']}-{index:0{width}d}" for index in range(1, options["machines"] + 1)]
        now = timezone.now()
        states = rng.choices(list(STATE_WEIGHTS), weights=list(STATE_WEIGHTS.values()), k=len(names))
        with transaction.atomic():
            machines = Machine.objects.bulk_create(
                [
                    Machine(
                        name=name,
                        state=state,
                        progress=100 if state == "ready" else round(rng.uniform(0, 99), 1),
                        last_report=now,
                    )
                    for name, state in zip(names, states, strict=True)
                ],
                batch_size=BATCH,
            )
            Software.objects.bulk_create(
                [
                    Software(
                        machine=machine,
                        name=package,
                        state=PACKAGE_STATE[machine.state],
                        percent=100 if machine.state == "ready" else round(rng.uniform(0, 99), 1),
                    )
                    for machine in machines
                    for package in rng.sample(CATALOG, rng.randint(3, 6))
                ],
                batch_size=BATCH,
            )
        FeedStore(redis_connections.sync_client()).announce(set(names))
        self.stdout.write(f"inserted {len(names)} machines ({names[0]} .. {names[-1]}) and announced them")
