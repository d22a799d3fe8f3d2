"""The voice-turn cases: turns against the stub backend, a burst of turns at once against
an instant backend (issue 12), and session starts against a backend that never answers."""

from __future__ import annotations

import asyncio
import socket
import time

from bench.cases.clients import bounded, close_all, connect_many, start_session, until_zero
from bench.report import Row
from bench.sizes import Sizes
from bench.targets import GatewayProcess, Nginx, cpu_seconds
from bench.wsload import BINARY, TEXT, WsClient, client_frame


async def case_turns(gateway: GatewayProcess, sizes: Sizes) -> list[Row]:
    clients = await bounded(connect_many(gateway.port, sizes.turn_connections, 20))
    frame = client_frame(BINARY, bytes(4096))
    start_recording = client_frame(TEXT, b'{"type":"start_recording","payload":{"format":"webm"}}')
    stop_recording = client_frame(TEXT, b'{"type":"stop_recording"}')

    async def run(client: WsClient) -> int:
        await start_session(client)
        for _ in range(sizes.turns_each):
            client.send(start_recording)
            await client.recv()
            for _ in range(10):
                client.send(frame)
                await client.recv()
            client.send(stop_recording)
            while b'"type":"audio"' not in (reply := await client.recv()):
                if b'"error"' in reply:
                    raise RuntimeError(f"turn failed: {reply[:160]!r}")
        return sizes.turns_each

    started = time.perf_counter()
    turns = sum(await bounded(asyncio.gather(*(run(c) for c in clients))))
    elapsed = time.perf_counter() - started
    close_all(clients)
    await until_zero(gateway)
    return [
        Row(
            f"voice turns, stub backend ({sizes.turn_connections} conns)",
            "voice_turns_per_s",
            turns / elapsed,
            unit="/s",
        )
    ]


async def burst_of_turns(gateway: GatewayProcess, clients: list[WsClient]) -> tuple[float, float]:
    """Every client starts one turn at the same moment: (gateway CPU s, wall s) until the
    last reply."""
    turn = client_frame(
        TEXT, b'{"type":"audio","payload":{"audio_base64":"' + b"A" * 13336 + b'"}}'
    )

    async def one(client: WsClient) -> None:
        client.send(turn)
        while b'"type":"audio"' not in (reply := await client.recv()):
            if b'"error"' in reply:
                raise RuntimeError(f"turn failed: {reply[:160]!r}")

    cpu_before = cpu_seconds(gateway.pid)
    started = time.perf_counter()
    await bounded(asyncio.gather(*(one(c) for c in clients)))
    return cpu_seconds(gateway.pid) - cpu_before, time.perf_counter() - started


async def case_turn_burst(gateway: GatewayProcess, sizes: Sizes) -> list[Row]:
    """Issue 12: 250 voice turns at once against an instant backend (the nginx stand-in),
    with a cold connection pool to the backend, then again warm."""
    count = sizes.burst_turns
    clients = await bounded(connect_many(gateway.port, count, 50))
    await bounded(asyncio.gather(*(start_session(c) for c in clients)))
    cold_cpu, cold_wall = await burst_of_turns(gateway, clients)
    warm_cpu, warm_wall = await burst_of_turns(gateway, clients)
    close_all(clients)
    await until_zero(gateway)
    return [
        Row(
            f"{count} turns at once, cold: gateway CPU",
            "burst_cold_cpu_ms",
            cold_cpu * 1e3,
            unit="ms",
        ),
        Row(
            f"{count} turns at once, cold: last reply",
            "burst_cold_wall_ms",
            cold_wall * 1e3,
            unit="ms",
        ),
        Row(
            f"{count} turns at once, warm: gateway CPU",
            "burst_warm_cpu_ms",
            warm_cpu * 1e3,
            unit="ms",
        ),
        Row(
            f"{count} turns at once, warm: last reply",
            "burst_warm_wall_ms",
            warm_wall * 1e3,
            unit="ms",
        ),
    ]


async def case_black_hole(nginx: Nginx, sizes: Sizes) -> list[Row]:
    """Issue 12: session starts against a backend that accepts connections and never answers,
    BACKEND_TIMEOUT=3 s: how late after its deadline each one's error arrives."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(4096)  # the kernel completes handshakes; nobody ever reads or answers
    gateway = GatewayProcess(
        backend_url=f"http://127.0.0.1:{hole.getsockname()[1]}",
        extra_env={"BACKEND_TIMEOUT": "3000"},
    )
    try:
        gateway.start()
        clients = await bounded(connect_many(gateway.port, sizes.burst_turns, 50))
        start = client_frame(TEXT, b'{"type":"start_session","payload":{"profileId":"bench"}}')

        async def late_by(client: WsClient) -> float:
            sent = time.perf_counter()  # each from its own send: they go out one by one
            client.send(start)
            reply = await client.recv()
            if b'"error"' not in reply:
                raise RuntimeError(f"expected a timeout error: {reply[:120]!r}")
            return time.perf_counter() - sent - 3.0

        lateness = await bounded(asyncio.gather(*(late_by(c) for c in clients)))
        close_all(clients)
    finally:
        gateway.stop()
        hole.close()
    return [
        Row(
            f"{sizes.burst_turns} starts against a black hole: latest error after the 3 s deadline",
            "black_hole_late_ms",
            max(lateness) * 1000,
            unit="ms",
        )
    ]
