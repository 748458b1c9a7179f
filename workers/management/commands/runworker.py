"""``runworker``, as Channels' but served by :class:`workers.runner.ResilientWorker`."""

from channels.management.commands import runworker

from project import metrics_http
from workers.runner import ResilientWorker


class Command(runworker.Command):
    help = (
        "Run worker channels: reconnects to Redis by itself, one message in hand per channel, stops cleanly."
    )
    worker_class = ResilientWorker

    def handle(self, *args, **options) -> None:
        metrics_http.serve_port("worker")  # on METRICS_PORT, if set
        super().handle(*args, **options)
