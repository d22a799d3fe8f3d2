"""Idle sockets held by a process of their own: it answers the gateway's protocol pings (as a
phone's WebSocket stack does) while the bench's main process is busy running wrk."""

from __future__ import annotations

import asyncio
import multiprocessing
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess

import uvloop

from bench.workers import token
from bench.wsload import WsClient, open_client


async def _hold(port: int, count: int, ready: Connection, seconds: float) -> None:
    gate = asyncio.Semaphore(100)

    async def one(n: int) -> WsClient:
        async with gate:
            return await open_client(port, token(f"idle-{n % 500}"))

    clients = await asyncio.gather(*(one(n) for n in range(count)))
    ready.send(len(clients))
    # Wait for "done" (or the deadline); the loop answers pings meanwhile (WsClient._parse).
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(ready.fileno(), done.set)
    try:
        await asyncio.wait_for(done.wait(), seconds)
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(ready.fileno())
    if ready.poll():
        ready.recv()
    dropped = sum(1 for c in clients if c.close_code is not None)
    for client in clients:
        client.close()
    ready.send(dropped)


def _main(port: int, count: int, ready: Connection, seconds: float) -> None:
    uvloop.run(_hold(port, count, ready, seconds))


class IdleSockets:
    """``count`` idle, authenticated sockets on ``port`` for at most ``seconds``."""

    def __init__(self, port: int, count: int, seconds: float = 120.0) -> None:
        context = multiprocessing.get_context("spawn")
        self._ours, theirs = context.Pipe()
        self._process: SpawnProcess = context.Process(
            target=_main, args=(port, count, theirs, seconds), daemon=True
        )
        self.count = count

    def __enter__(self) -> IdleSockets:
        self._process.start()
        if not self._ours.poll(120):
            raise RuntimeError("the idle sockets were not all open within 120 s")
        opened = self._ours.recv()
        if opened != self.count:
            raise RuntimeError(f"{opened} idle sockets open, not {self.count}")
        return self

    @property
    def pid(self) -> int:
        pid = self._process.pid
        assert pid is not None  # started in __enter__
        return pid

    def release(self) -> int:
        """Close them; how many the gateway had dropped meanwhile (it must be 0)."""
        self._ours.send("done")
        dropped: int = self._ours.recv() if self._ours.poll(30) else -1
        return dropped

    def __exit__(self, *_: object) -> None:
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()
