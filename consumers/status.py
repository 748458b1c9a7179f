"""The live status stream: ``/ws/status/`` and the seed's ``/ws/attime/``."""

from __future__ import annotations

from project import protocol

from .base import RelayConsumer, identify


class StatusConsumer(RelayConsumer):
    worker_channel = protocol.STATUS_WORKER
    client_types = protocol.STATUS_CLIENT_TYPES

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
