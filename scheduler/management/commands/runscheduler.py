from django.core.management.base import BaseCommand

from project import metrics, metrics_http
from scheduler.service import Scheduler


class Command(BaseCommand):
    help = "Run the scheduler: per-second ticks and periodic jobs sent to worker channels."

    def handle(self, *args, **options) -> None:
        scheduler = Scheduler.from_settings()
        metrics_http.serve_port("scheduler", metrics.LeaseCollector(scheduler))  # on METRICS_PORT, if set
        scheduler.run()
