from django.core.management.base import BaseCommand

from scheduler.service import Scheduler


class Command(BaseCommand):
    help = "Run the scheduler: per-second ticks and periodic jobs sent to worker channels."

    def handle(self, *args, **options) -> None:
        Scheduler.from_settings().run()
