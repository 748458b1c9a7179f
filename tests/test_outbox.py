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
    calls: list[list[str]] = []

    async def then() -> None:
        calls.append(list(socket.written))

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
