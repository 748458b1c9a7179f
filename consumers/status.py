"""The live status stream: ``/ws/status/`` and the seed's ``/ws/attime/``.

A socket shows the whole fleet (what every client that never chose a view gets) or a view of
it (``status.view``, or ``?page=&state=&search=`` in the URL): it is in the view's group and
gets the view's updates. Nothing it asks for goes to a worker: its snapshots are read from
the fleet the status worker published in Redis (consumers/fleetviews.py), in a task of the
socket's own while the updates that arrive meanwhile wait; then they follow the snapshot,
those it already covers dropped. So the client gets the snapshot at some ``seq`` N and then
every update from N + 1 on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from project import metrics, protocol
from project.protocol import ErrorCode, ProtocolError, StatusView
from project.statusviews import TooManyViews

from .base import RelayConsumer, group_layer, identify
from .fanout import fanout_for
from .fleetviews import fleet_views
from .outbox import Outbox

log = logging.getLogger(__name__)


class StatusConsumer(RelayConsumer):
    worker_channel = protocol.STATUS_WORKER
    client_types = protocol.STATUS_CLIENT_TYPES
    # Frames dropped for a slow client since its last resync notice was read; while this is
    # above 0 a notice waits in the outbox (an overflow always drops at least one frame).
    dropped_since_notice = 0
    view: StatusView | None = None  # None: the whole fleet
    # While a snapshot is being read: the updates that arrived meanwhile, else None.
    held: deque[dict[str, Any]] | None = None
    serving: asyncio.Task | None = None
    # (epoch, seq) of the last snapshot sent, until an update after it passes: an update it
    # covers can still be on its way (the snapshot was read after the update was stored).
    covered: tuple[str, int] | None = None

    async def connect(self) -> None:
        # The fleet is for operators: no guests here, whatever ALLOW_ANONYMOUS says.
        if identify(self.scope, allow_anonymous=False) is None:
            metrics.handshake(self.worker_channel, metrics.UNAUTHENTICATED)
            await self.close()
            return
        refusal: ProtocolError | None
        try:
            self.view = protocol.status_view_from_query(self.scope.get("query_string", b""))
        except ProtocolError as error:  # said once the socket is open; it shows page 1 meanwhile
            self.view, refusal = StatusView(), error
        else:
            refusal = None
        if self.view is not None:
            fleet_views.show(self.view)
        # Join first, then read the snapshot (see the module's docstring).
        group = protocol.STATUS_GROUP if self.view is None else self.view.group
        if await self.join_and_ask(group, {"type": protocol.STATUS_RESYNC}) and refusal is not None:
            await self.send_frame(refusal.frame())

    async def forward(self, frame: dict[str, Any]) -> bool:
        """Status frames are served here, from Redis; none goes to a worker."""
        if frame["type"] == protocol.STATUS_VIEW:
            try:
                view = protocol.check_status_view(frame)
            except ProtocolError as error:
                await self.send_frame(error.frame())
                return True
            return await self.show(view)
        self.serve_snapshot()
        return True

    async def show(self, view: StatusView) -> bool:
        """Move the socket to ``view``'s group and send it the view's snapshot."""
        self.stop_serving()
        self.held = deque(maxlen=self.outbox.max_frames)  # the new group's updates wait from now on
        if view.group != self.group:
            if self.group is not None:
                group, self.group = self.group, None
                await fanout_for(group_layer()).leave(group, self)
            try:
                await self.join_group(view.group)
            except Exception as error:  # Redis away: the client asks again
                log.warning("could not join %s (%s)", view.group, error)
                fanout_for(group_layer()).layer_failed()
                await self.send_frame(
                    ProtocolError(ErrorCode.SERVER_BUSY, "the server is busy, try again shortly").frame()
                )
                return False
        if view != self.view:
            if self.view is not None:
                fleet_views.hide(self.view)
            self.view = view
            fleet_views.show(view)
        self.serve_snapshot()
        return True

    def serve_snapshot(self) -> None:
        """Send the socket its view's snapshot, unless one is already on its way."""
        if self.serving is not None and not self.serving.done():
            return
        if self.held is None:
            self.held = deque(maxlen=self.outbox.max_frames)
        self.serving = asyncio.get_running_loop().create_task(self.send_snapshot())

    async def send_snapshot(self) -> None:
        try:
            snapshot = await fleet_views.snapshot(self.view)
        except TooManyViews:
            self.held = None
            detail = f"{protocol.STATUS_VIEWS_MAX} different views are shown already; try again shortly"
            await self.send_frame(ProtocolError(ErrorCode.SERVER_BUSY, detail).frame())
            return
        self.outbox.put(snapshot.text)
        held, self.held = self.held or (), None
        self.covered = (snapshot.epoch, snapshot.seq)
        for update in held:
            await self.status_update(update)

    def stop_serving(self) -> None:
        if self.serving is not None:
            self.serving.cancel()
            self.serving = None
        self.held = None

    async def status_update(self, event: dict[str, Any]) -> None:
        if self.held is not None:
            self.held.append(event)
            return
        if self.covered is not None:
            epoch, seq = self.covered
            if event.get("epoch") == epoch and event.get("seq", seq + 1) <= seq:
                return
            self.covered = None
        self.outbox.put(event["text"])

    async def clean_up(self) -> None:
        self.stop_serving()
        if self.view is not None:
            fleet_views.hide(self.view)
            self.view = None
        await super().clean_up()

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
        notice = {
            "type": protocol.STATUS_RESYNC,
            "reason": protocol.SLOW_CLIENT,
            "dropped": self.dropped_since_notice,
        }
        outbox.put(protocol.encode(notice), then=self.notice_read)

    async def notice_read(self) -> None:
        self.dropped_since_notice = 0
        await self.forward({"type": protocol.STATUS_RESYNC})
