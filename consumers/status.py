"""The live status stream: ``/ws/status/`` and the seed's ``/ws/attime/``."""

from __future__ import annotations

import logging

from project import metrics, protocol

from .base import RelayConsumer, identify
from .outbox import Outbox

log = logging.getLogger(__name__)


class StatusConsumer(RelayConsumer):
    worker_channel = protocol.STATUS_WORKER
    client_types = protocol.STATUS_CLIENT_TYPES
    # Frames dropped for a slow client since its last resync notice was read; while this is
    # above 0 a notice waits in the outbox (an overflow always drops at least one frame).
    dropped_since_notice = 0

    async def connect(self) -> None:
        # The fleet is for operators: no guests here, whatever ALLOW_ANONYMOUS says.
        if identify(self.scope, allow_anonymous=False) is None:
            metrics.handshake(self.worker_channel, metrics.UNAUTHENTICATED)
            await self.close()
            return
        # Join first, then ask for the snapshot: an update that overtakes it carries
        # a seq the snapshot already covers, and the client drops it.
        await self.join_and_ask(protocol.STATUS_GROUP, {"type": protocol.STATUS_JOIN})

    status_snapshot = RelayConsumer.relay
    status_update = RelayConsumer.relay

    def slow_client(self, outbox: Outbox) -> None:
        """Conflate: what waits is stale, so drop it, say so, and send the newest state whole.

        Updates are deltas, useless after a gap; one fresh snapshot replaces them all. It is
        asked for only once the client has read the notice: a client that stays stalled costs
        the worker nothing, and its outbox holds one notice (the count of what it missed).
        """
        notice_waiting = self.dropped_since_notice > 0
        dropped = outbox.clear() - (1 if notice_waiting else 0)  # a waiting notice is replaced
        self.dropped_since_notice += dropped
        log.info("resyncing a slow status socket; dropped %d frames", dropped)
        metrics.slow_client_resyncs.inc()
        notice = {"type": protocol.STATUS_RESYNC, "reason": protocol.SLOW_CLIENT, "dropped": self.dropped_since_notice}
        outbox.put(protocol.encode(notice), then=self.notice_read)

    async def notice_read(self) -> None:
        self.dropped_since_notice = 0
        await self.forward({"type": protocol.STATUS_RESYNC})
