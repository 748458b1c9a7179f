"""The per-socket outgoing queue on its own: order, the bound, and a writer that waits."""

from __future__ import annotations

import asyncio

from consumers.outbox import Outbox


class Socket:
    """A socket whose writes wait while ``readable`` is clear, like a client that stopped reading."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.readable = asyncio.Event()
        self.readable.set()

    async def write(self, text: str) -> None:
        await self.readable.wait()
        self.written.append(text)


def written_before_then(socket: Socket):
    """A ``then`` for :meth:`Outbox.put`, and what the socket had written each time it ran."""
    calls: list[list[str]] = []

    async def then() -> None:
        calls.append(list(socket.written))

    return calls, then


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_frames_are_written_in_order_and_put_never_waits():
    socket = Socket()
    outbox = Outbox(socket.write, on_overflow=lambda _: None, max_frames=10, max_bytes=1000)
    outbox.put("early")  # before start, e.g. between joining a group and accepting
    outbox.start()
    for text in ("a", "b", "c"):
        outbox.put(text)
    await settle()
    assert socket.written == ["early", "a", "b", "c"]


async def test_a_stalled_socket_overflows_once_past_the_frame_bound():
    socket = Socket()
    overflows: list[int] = []
    outbox = Outbox(
        socket.write, on_overflow=lambda box: overflows.append(box.clear()), max_frames=3, max_bytes=10**6
    )
    outbox.start()
    socket.readable.clear()
    outbox.put("in flight")  # taken by the writer, which now waits
    await settle()
    for n in range(3):
        outbox.put(f"waiting {n}")
    assert overflows == []
    outbox.put("one too many")
    assert overflows == [4]
    assert len(outbox.waiting) == 0 and outbox.waiting_bytes == 0


async def test_the_byte_bound_counts_waiting_text():
    overflows: list[int] = []
    outbox = Outbox(
        Socket().write,
        on_overflow=lambda box: overflows.append(box.waiting_bytes),
        max_frames=100,
        max_bytes=10,
    )
    outbox.put("12345")
    outbox.put("67890")
    assert overflows == []
    outbox.put("x")
    assert overflows == [11]


async def test_one_frame_larger_than_the_byte_bound_alone_is_not_an_overflow():
    socket = Socket()
    overflows: list[int] = []
    outbox = Outbox(
        socket.write, on_overflow=lambda box: overflows.append(box.clear()), max_frames=100, max_bytes=10
    )
    outbox.put("a whole-fleet snapshot")
    assert overflows == []
    outbox.put("an update behind it")
    assert overflows == [2]


async def test_then_runs_after_its_frame_is_written_and_not_if_it_is_dropped():
    socket = Socket()
    calls, then = written_before_then(socket)
    outbox = Outbox(socket.write, on_overflow=lambda _: None, max_frames=10, max_bytes=1000)
    outbox.put("notice", then=then)
    outbox.put("dropped", then=then)
    outbox.waiting.pop()  # as a clear() would
    outbox.start()
    await settle()
    assert calls == [["notice"]]


async def test_shut_down_stops_the_writer_and_drops_what_waits():
    socket = Socket()
    outbox = Outbox(socket.write, on_overflow=lambda _: None, max_frames=10, max_bytes=1000)
    outbox.start()
    socket.readable.clear()
    outbox.put("in flight")
    await settle()
    outbox.put("waiting")
    assert outbox.shut_down() == 1
    outbox.put("after")
    socket.readable.set()
    await settle()
    assert socket.written == [] and outbox.writer.cancelled()


async def test_a_failed_write_stops_the_outbox():
    async def gone(text: str) -> None:
        raise ConnectionResetError("client went away")

    outbox = Outbox(gone, on_overflow=lambda _: None, max_frames=10, max_bytes=1000)
    outbox.start()
    outbox.put("lost")
    await settle()
    assert outbox.shut and outbox.writer.done() and not outbox.writer.cancelled()
    outbox.put("ignored")
    assert len(outbox.waiting) == 0


# --- frames written at once, in the step that puts them --------------------------------------


async def test_a_frame_put_while_the_writer_waits_is_written_before_put_returns():
    socket = Socket()
    outbox = Outbox(socket.write, on_overflow=lambda _: None, max_frames=10, max_bytes=1000)
    outbox.start()
    await settle()  # the writer now waits for frames
    outbox.put("at once")
    assert socket.written == ["at once"]  # no await in between: the writer task cannot have run
    assert outbox.idle and not outbox.waiting
    outbox.put("and the next")
    assert socket.written == ["at once", "and the next"]


async def test_a_write_begun_at_once_that_waits_is_finished_by_the_writer_in_order():
    socket = Socket()
    overflows: list[int] = []
    outbox = Outbox(
        socket.write, on_overflow=lambda box: overflows.append(len(box.waiting)), max_frames=2, max_bytes=1000
    )
    outbox.start()
    await settle()
    socket.readable.clear()  # the client stops reading
    outbox.put("stuck")  # begun at once; it waits, so the writer takes it over
    assert socket.written == [] and outbox.in_flight is not None and not outbox.idle
    outbox.put("behind it")  # queued, not written past the stuck one
    outbox.put("and another")
    assert overflows == []
    outbox.put("one too many")
    assert overflows == [3]
    outbox.waiting.pop()
    await settle()
    assert socket.written == []
    socket.readable.set()
    await settle()
    assert socket.written == ["stuck", "behind it", "and another"]
    assert outbox.in_flight is None and outbox.idle
    outbox.put("at once again")
    assert socket.written[-1] == "at once again"


async def test_a_frame_with_then_is_never_written_at_once():
    socket = Socket()
    calls, then = written_before_then(socket)
    outbox = Outbox(socket.write, on_overflow=lambda _: None, max_frames=10, max_bytes=1000)
    outbox.start()
    await settle()
    outbox.put("notice", then=then)
    outbox.put("update")  # waits behind the notice
    assert socket.written == []
    await settle()
    assert socket.written == ["notice", "update"] and calls == [["notice"]]


async def a_write_that_waits() -> tuple[Socket, Outbox]:
    """An outbox whose writer waits for frames, and a frame put after its client stopped reading."""
    socket = Socket()
    outbox = Outbox(socket.write, on_overflow=lambda _: None, max_frames=10, max_bytes=1000)
    outbox.start()
    await settle()
    socket.readable.clear()
    outbox.put("stuck")
    return socket, outbox


async def test_shut_down_closes_a_write_begun_at_once_that_waits():
    socket, outbox = await a_write_that_waits()
    step = outbox.in_flight[0]
    assert outbox.shut_down() == 0
    assert step.cr_frame is None  # closed, not left suspended
    socket.readable.set()
    await settle()
    assert socket.written == [] and outbox.writer.cancelled()


async def test_cancelling_the_writer_reaches_a_resumed_write_where_it_waits():
    socket, outbox = await a_write_that_waits()
    await settle()  # the writer has taken the write over and waits in it
    assert outbox.in_flight is None
    outbox.writer.cancel()
    await settle()
    assert outbox.writer.cancelled() and not socket.readable._waiters  # the socket's wait ended too
    socket.readable.set()
    await settle()
    assert socket.written == []


async def test_a_write_begun_at_once_that_fails_stops_the_outbox():
    async def gone(text: str) -> None:
        raise ConnectionResetError("client went away")

    outbox = Outbox(gone, on_overflow=lambda _: None, max_frames=10, max_bytes=1000)
    outbox.start()
    await settle()
    outbox.put("lost")
    assert outbox.shut
    await settle()
    assert outbox.writer.cancelled()
    outbox.put("ignored")
    assert len(outbox.waiting) == 0


async def test_a_resumed_write_that_fails_after_waiting_stops_the_outbox():
    release = asyncio.Event()

    async def fails_later(text: str) -> None:
        await release.wait()
        raise ConnectionResetError("client went away")

    outbox = Outbox(fails_later, on_overflow=lambda _: None, max_frames=10, max_bytes=1000)
    outbox.start()
    await settle()
    outbox.put("lost")
    assert outbox.in_flight is not None
    release.set()
    await settle()
    assert outbox.shut and outbox.writer.done() and not outbox.writer.cancelled()
