"""The flood case (issue 11): one socket sends pings unpaced while 50 others ping at a human
pace; how much the flood costs the others, with the per-connection rate limits on."""

from __future__ import annotations

import asyncio
import time
from multiprocessing import get_context
from multiprocessing.pool import AsyncResult, Pool

import uvloop

from bench.wsload import TEXT, client_frame, open_client

PING = client_frame(TEXT, b'{"type":"ping"}')
CHUNK = 200  # pings written per burst by the flooder


def flood_worker(port: int, token: str, seconds: float) -> tuple[int, float]:
    """In its own process: ping as fast as the socket takes them; (pongs received, seconds)."""

    async def run() -> tuple[int, float]:
        client = await open_client(port, token)
        received = 0

        def count(_: bytes) -> None:
            nonlocal received
            received += 1

        client.on_text = count
        started = time.perf_counter()
        assert client.transport is not None
        while time.perf_counter() - started < seconds:
            # Keep the pipe full; the gateway reads it at its rate and TCP pushes back.
            full = client.transport.get_write_buffer_size() > 256 * 1024
            if not full:
                client.transport.write(PING * CHUNK)
            await asyncio.sleep(0.001 if full else 0)
        elapsed = time.perf_counter() - started
        client.close()
        return received, elapsed

    return uvloop.run(run())


async def paced_pings(port: int, tokens: list[str], seconds: float, every: float) -> list[float]:
    """Each client pings every ``every`` seconds for ``seconds``; the round trips."""
    clients = [await open_client(port, t) for t in tokens]
    latencies: list[float] = []

    async def one(index: int) -> None:
        client = clients[index]
        await asyncio.sleep(every * index / len(clients))  # spread over the interval
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            client.send(PING)
            await client.recv()
            latencies.append(time.perf_counter() - sent)
            await asyncio.sleep(max(0.0, every - (time.perf_counter() - sent)))

    await asyncio.gather(*(one(i) for i in range(len(clients))))
    for client in clients:
        client.close()
    return latencies


def start_flood(
    port: int, token: str, seconds: float
) -> tuple[Pool, AsyncResult[tuple[int, float]]]:
    """The flooder, in a process of its own (one Python client cannot out-send the gateway
    and measure the others at the same time)."""
    pool = get_context("spawn").Pool(1)
    return pool, pool.apply_async(flood_worker, (port, token, seconds))
