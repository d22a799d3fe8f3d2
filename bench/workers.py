"""Load that runs in client processes of its own, so the client is not what the figure measures.

Each worker connects first, then waits for a shared wall-clock start, runs its loop and
reports what it did and when it finished. The parent adds the workers' counts and divides by
the time from the common start to the last finish.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

import uvloop

from bench.targets import SECRET, cpu_seconds
from bench.wsload import BINARY, TEXT, RequestLoop, WsClient, client_frame, open_client
from kalami_gateway.adapters.jwt_decoder import mint_token

WORKER_DEADLINE_S = 120.0


@dataclass
class WorkerResult:
    operations: int
    payload_bytes: int
    finished: float
    latencies: list[float] = field(default_factory=list)
    gateway_cpu_at_finish: float = 0.0


@dataclass
class LoadRun:
    """One run of a load over all workers: from the common start to the last finish."""

    operations: int
    payload_bytes: int
    seconds: float
    gateway_cpu_seconds: float
    latencies: list[float]


def token(user: str) -> str:
    return mint_token(SECRET, user, time.time() + 3600)


async def _connect(port: int, count: int, first_user: int) -> list[WsClient]:
    return list(
        await asyncio.gather(
            *(open_client(port, token(f"load-{first_user + n}")) for n in range(count))
        )
    )


async def _until(start_at: float) -> None:
    await asyncio.sleep(max(0.0, start_at - time.time()))


async def _run(
    loops: list[RequestLoop], clients: list[WsClient], start_at: float, gateway_pid: int
) -> tuple[float, float]:
    """Start every loop at ``start_at``; when all are done, the time and the gateway's CPU."""
    await _until(start_at)
    for loop in loops:
        loop.start()
    await asyncio.wait_for(asyncio.gather(*(loop.done for loop in loops)), WORKER_DEADLINE_S)
    finished = time.time()
    cpu = cpu_seconds(gateway_pid)
    for client in clients:
        client.close()
    return finished, cpu


async def _pings(
    port: int, count: int, pings: int, first_user: int, start_at: float, gateway_pid: int
) -> WorkerResult:
    clients = await _connect(port, count, first_user)
    ping = client_frame(TEXT, b'{"type":"ping"}')
    loops = [RequestLoop(c, ping, b'"pong"', pings) for c in clients]
    finished, cpu = await _run(loops, clients, start_at, gateway_pid)
    latencies = [x for loop in loops for x in loop.latencies]
    return WorkerResult(len(latencies), 0, finished, latencies, cpu)


async def _audio(
    port: int,
    count: int,
    frames: int,
    first_user: int,
    start_at: float,
    gateway_pid: int,
    preface: bool = True,
) -> WorkerResult:
    clients = await _connect(port, count, first_user)
    frame = client_frame(BINARY, bytes(range(256)) * 16)  # 4096 bytes
    # The Node anchor has no session logic: it acknowledges binary frames in any state.
    for client in clients if preface else ():
        client.send(client_frame(TEXT, b'{"type":"start_session","payload":{"profileId":"bench"}}'))
        client.send(client_frame(TEXT, b'{"type":"start_recording","payload":{"format":"webm"}}'))
    for client in clients if preface else ():
        for expected in (b'"session_started"', b'"recording_started"'):
            reply = await client.recv()
            if expected not in reply:
                raise RuntimeError(f"expected {expected!r}, got {reply[:120]!r}")

    loops = [RequestLoop(c, frame, b'"audio_received"', frames) for c in clients]
    finished, cpu = await _run(loops, clients, start_at, gateway_pid)
    return WorkerResult(count * frames, count * frames * 4096, finished, [], cpu)


def ping_worker(
    port: int, count: int, pings: int, first_user: int, start_at: float, gateway_pid: int
) -> WorkerResult:
    return uvloop.run(_pings(port, count, pings, first_user, start_at, gateway_pid))


def audio_worker(
    port: int, count: int, frames: int, first_user: int, start_at: float, gateway_pid: int
) -> WorkerResult:
    return uvloop.run(_audio(port, count, frames, first_user, start_at, gateway_pid))


def raw_audio_worker(
    port: int, count: int, frames: int, first_user: int, start_at: float, gateway_pid: int
) -> WorkerResult:
    """Audio frames without starting a session and a recording first (the Node anchor)."""
    return uvloop.run(_audio(port, count, frames, first_user, start_at, gateway_pid, False))


def spread(total: int, workers: int) -> list[int]:
    """``total`` connections over ``workers`` processes, as evenly as possible."""
    return [total // workers + (1 if n < total % workers else 0) for n in range(workers)]


def run_workers(
    kind: str, port: int, gateway_pid: int, connections: int, per_connection: int, workers: int
) -> LoadRun:
    """Run a load in ``workers`` processes, all starting at one moment after connecting."""
    target = {"ping": ping_worker, "audio": audio_worker, "raw_audio": raw_audio_worker}[kind]
    start_at = time.time() + 2.0 + connections * 0.005  # time for everyone to connect first
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = []
        first = 0
        for share in spread(connections, workers):
            args = (port, share, per_connection, first, start_at, gateway_pid)
            futures.append(pool.submit(target, *args))
            first += share
        time.sleep(max(0.0, start_at - time.time()))
        cpu_at_start = cpu_seconds(gateway_pid)
        results = [f.result(timeout=WORKER_DEADLINE_S + 30) for f in futures]
    return LoadRun(
        operations=sum(r.operations for r in results),
        payload_bytes=sum(r.payload_bytes for r in results),
        seconds=max(r.finished for r in results) - start_at,
        gateway_cpu_seconds=max(r.gateway_cpu_at_finish for r in results) - cpu_at_start,
        latencies=[x for r in results for x in r.latencies],
    )
