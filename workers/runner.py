"""``runworker``'s server, made to outlive Redis and to stop cleanly.

Channels' ``Worker`` has three habits a long-running service cannot keep:

- one ``ConnectionError`` from the channel layer (Redis restarting, a Sentinel failover) ends
  its listener and with it the process;
- it pops messages as fast as Redis hands them over and queues them in process memory, so a
  SIGKILL loses every message queued there, and a second worker on the same channel finds
  nothing to do while the first holds a backlog;
- SIGTERM kills it wherever it is.

This one retries the layer with capped, jittered backoff; takes the next message of a channel
only once the previous one has been handled (at most one message per channel is ever in the
process); and on SIGTERM or SIGINT stops taking messages, lets the ones in hand finish, and
exits 0.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import signal
import warnings
from typing import Any

from channels.worker import Worker

log = logging.getLogger("django.channels.worker")

# asgiref's StatelessServer hands each application ``send=lambda message: ...`` (a plain function
# returning a coroutine), and Channels' SyncConsumer wraps it in ``async_to_sync``, which warns
# once per process that the callable is not marked async. The call works; neither side is ours,
# and our consumers send through the channel layer, never through ``send``. Only that warning
# is silenced: one from our own code would still show.
warnings.filterwarnings(
    "ignore",
    message="async_to_sync was passed a non-async-marked callable",
    category=UserWarning,
    module="asgiref.sync",
)

# The key under which a message carries the future its consumer resolves once handled
# (workers/base.py); never sent anywhere.
HANDLED = "__handled__"
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0
STOP_GRACE_S = 10.0
LISTENER_STOP_S = 2.0


def task_stack(task: asyncio.Task) -> str:
    buffer = io.StringIO()
    task.print_stack(file=buffer)
    return buffer.getvalue()


def backoff_s(failures: int) -> float:
    """Full-jitter exponential backoff: spread the reconnects of many processes out."""
    return random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**failures))


class ResilientWorker(Worker):
    async def handle(self) -> None:
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stopping.set)
        self.in_hand: set[asyncio.Future] = set()
        listeners = [loop.create_task(self.listener(channel)) for channel in self.channels]
        await self.stopping.wait()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)  # a second signal stops the process at once
        log.info("stopping: no new messages; finishing %d in hand", len(self.in_hand))
        for listener in listeners:
            # A receive cancelled mid-way leaves its message in the layer's backup queue,
            # which the next receive on that channel (another worker's) restores.
            listener.cancel()
        # A cancelled receive ends at once, nearly always: twice in some thirty loaded test runs
        # one did not, and held the exit up until the SIGKILL. It must not hold a deploy up, and
        # whatever it was receiving is in that backup queue; its stack goes to the log.
        _, stuck = await asyncio.wait(listeners, timeout=LISTENER_STOP_S)
        for listener in stuck:
            log.warning("a receive did not end when cancelled; exiting without it:\n%s", task_stack(listener))
        if self.in_hand:
            await asyncio.wait(self.in_hand, timeout=STOP_GRACE_S)
        log.info("worker stopped")

    async def listener(self, channel: str) -> None:
        failures = 0
        while True:
            try:
                message = await self.channel_layer.receive(channel)
            except Exception as error:  # Redis away, restarting or failing over
                pause_s = backoff_s(failures)
                failures += 1
                log.warning(
                    "receiving on %s failed (%s: %s); retrying in %.2f s",
                    channel,
                    type(error).__name__,
                    error,
                    pause_s,
                )
                await asyncio.sleep(pause_s)
                continue
            if failures:
                log.info("receiving on %s again after %d failure(s)", channel, failures)
                failures = 0
            await self.hand_over(channel, message)

    async def hand_over(self, channel: str, message: dict[str, Any]) -> None:
        """Give ``message`` to the channel's consumer and wait until it has been handled."""
        if not message.get("type"):
            log.warning("dropped a message with no type on %s", channel)
            return
        handled = asyncio.get_running_loop().create_future()
        message[HANDLED] = handled
        self.in_hand.add(handled)
        try:
            queue = self.get_or_create_application_instance(channel, {"type": "channel", "channel": channel})
            await queue.put(message)
            await asyncio.shield(handled)
        finally:
            self.in_hand.discard(handled)
