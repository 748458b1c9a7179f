"""What every worker consumer shares: counting its messages, surviving a bad one, saying when it is done."""

from __future__ import annotations

import logging
import time
from typing import Any

from channels.consumer import SyncConsumer
from channels.exceptions import StopConsumer

from project import metrics

from .metrics import handled
from .runner import HANDLED

log = logging.getLogger(__name__)


class WorkerConsumer(SyncConsumer):
    """A worker channel's consumer.

    An exception in a handler would otherwise end this consumer instance, and with it
    any state it holds; it is logged and the next message is served. Once a message is
    handled, the runner (``workers/runner.py``) is told, and only then takes the next.
    """

    async def dispatch(self, message: dict[str, Any]) -> None:
        handled.increment()
        done = message.pop(HANDLED, None)
        started, failed = time.perf_counter(), False
        try:
            await super().dispatch(message)
        except StopConsumer:
            raise
        except Exception:
            failed = True
            log.exception("worker failed on a %s message", message.get("type"))
        finally:
            metrics.worker_handled(message.get("type", ""), started, failed)
            if done is not None and not done.done():
                done.set_result(None)
