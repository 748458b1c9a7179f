"""workers/runner.py's stop, without processes: a receive that ignores its cancellation."""

from __future__ import annotations

import asyncio
import time

from workers.runner import LISTENER_STOP_S, ResilientWorker


class StubbornLayer:
    """A channel layer whose receive swallows its first cancellation (as one stuck receive did)."""

    def __init__(self) -> None:
        self.receiving = asyncio.Event()

    async def receive(self, channel: str) -> dict:
        self.receiving.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.Event().wait()  # until cancelled a second time
        raise AssertionError("never reached")


async def test_a_receive_that_ignores_its_cancellation_does_not_hold_the_stop_up(caplog):
    layer = StubbornLayer()
    worker = ResilientWorker(application=None, channels=["chat"], channel_layer=layer)
    handling = asyncio.create_task(worker.handle())
    await asyncio.wait_for(layer.receiving.wait(), 5)
    started = time.monotonic()
    worker.stopping.set()
    await asyncio.wait_for(handling, LISTENER_STOP_S + 2)
    assert time.monotonic() - started < LISTENER_STOP_S + 1
    assert "a receive did not end when cancelled" in caplog.text
    assert "worker stopped" in caplog.text
    for task in asyncio.all_tasks() - {asyncio.current_task()}:  # the stubborn receive
        task.cancel()
