"""The live status stream: ``/ws/status/`` and the seed's ``/ws/attime/``."""

from __future__ import annotations

import asyncio
import logging

from project import protocol

from .base import RelayConsumer, identify
from .outbox import Outbox

log = logging.getLogger(__name__)


class StatusConsumer(RelayConsumer):
    worker_channel = protocol.STATUS_WORKER
    client_types = protocol.STATUS_CLIENT_TYPES
    resyncing: asyncio.Task | None = None  # the snapshot asked for on a slow client's behalf

    async def connect(self) -> None:
        # The fleet is for operators: no guests here, whatever ALLOW_ANONYMOUS says.
        if identify(self.scope, allow_anonymous=False) is None:
            await self.close()
            return
        # Join first, then ask for the snapshot: an update that overtakes it carries
        # a seq the snapshot already covers, and the client drops it.
        await self.join_group(protocol.STATUS_GROUP)
        await self.accept()
        await self.forward({"type": protocol.STATUS_JOIN})

    status_snapshot = RelayConsumer.relay
    status_update = RelayConsumer.relay

    def slow_client(self, outbox: Outbox) -> None:
        """Conflate: what waits is stale, so drop it, say so, and send the newest state whole.

        Updates are deltas, useless after a gap; a fresh snapshot replaces them all. The
        client is told first, so it holds off its own resync until the snapshot arrives.
        """
        dropped = outbox.clear()
        log.info("resyncing a slow status socket; dropped %d frames", dropped)
        outbox.put(protocol.encode({"type": protocol.STATUS_RESYNC, "reason": protocol.SLOW_CLIENT, "dropped": dropped}))
        self.resyncing = asyncio.get_running_loop().create_task(self.forward({"type": protocol.STATUS_RESYNC}))
