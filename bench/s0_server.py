"""S0, the ceiling: a bare ``websockets`` broadcast server, no Django, no Redis.

Sends a snapshot on connect, then one small ``status.update`` a second, on the wall-clock
boundary, to every client, encoded once (``websockets.broadcast``). What this machine can
do with Python at all; our stack is read against it.

    python bench/s0_server.py --port 8765 [--pad-bytes 45000]

``--pad-bytes`` makes each update as large as a real one (S1's are ~40-70 KB with 200
machines changing), so that the cost of bytes can be told from the cost of the stack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import websockets


async def serve(port: int, pad_bytes: int) -> None:
    clients: set = set()
    seq = 0

    async def handler(ws) -> None:
        clients.add(ws)
        try:
            await ws.send(json.dumps({"type": "status.snapshot", "epoch": "s0", "seq": seq}))
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    async with websockets.serve(
        handler, "127.0.0.1", port, max_size=2**16, ping_interval=None, compression=None
    ):
        while True:
            now_ns = time.time_ns()
            tick_ns = (now_ns // 1_000_000_000 + 1) * 1_000_000_000
            await asyncio.sleep((tick_ns - now_ns) / 1e9)
            seq += 1
            frame = json.dumps(
                {
                    "type": "status.update",
                    "epoch": "s0",
                    "seq": seq,
                    "tick_ns": tick_ns,
                    "machines": [],
                    "removed": [],
                    "pad": "x" * pad_bytes,
                }
            )
            websockets.broadcast(clients, frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--pad-bytes", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.port, args.pad_bytes))


if __name__ == "__main__":
    main()
