"""What every worker consumer shares: counting its messages and surviving a bad one."""

from __future__ import annotations

import logging
from typing import Any

from channels.consumer import SyncConsumer
from channels.exceptions import StopConsumer

from .metrics import handled

log = logging.getLogger(__name__)


class WorkerConsumer(SyncConsumer):
    """A worker channel's consumer.

    An exception in a handler would otherwise end this consumer instance, and with it
    any state it holds (the status feed would restart under a new epoch); it is logged
    and the next message is served.
    """

    async def dispatch(self, message: dict[str, Any]) -> None:
        handled.increment()
        try:
            await super().dispatch(message)
        except StopConsumer:
            raise
        except Exception:
            log.exception("worker failed on a %s message", message.get("type"))
