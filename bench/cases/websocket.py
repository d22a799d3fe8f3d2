"""The WebSocket cases run against the gateway, the Node stack and the empty apps alike:
authenticated connects, ping round trips, and audio frames acknowledged (ingest, or streamed
on to the backend)."""

from __future__ import annotations

import statistics
import time

from bench.cases.clients import (
    Target,
    bounded,
    close_all,
    connect_with,
    open_connections,
    token,
    until_zero,
)
from bench.report import Row
from bench.sizes import Sizes
from bench.targets import cpu_seconds
from bench.workers import LoadRun, run_workers

# Load-generating client processes for the message cases: one Python client cannot keep up
# with the gateway, so it would measure itself (it shares the machine's 2 cores with it).
CLIENT_WORKERS = 2
REPEATS = 3


async def case_connects(gateway: Target, sizes: Sizes) -> list[Row]:
    tokens = [token(f"user-{n % 500}") for n in range(sizes.connects)]
    cpu_before = cpu_seconds(gateway.pid)
    started = time.perf_counter()
    clients = await bounded(connect_with(gateway.port, tokens, sizes.connect_concurrency))
    elapsed = time.perf_counter() - started
    cpu_per_connect = (cpu_seconds(gateway.pid) - cpu_before) / sizes.connects * 1e6
    seen = open_connections(gateway)
    if seen != sizes.connects:
        raise RuntimeError(f"/stats says {seen} connections, expected {sizes.connects}")
    close_all(clients)
    await until_zero(gateway)
    return [
        Row(
            "WS connects (authenticated, welcomed)",
            "ws_connects_per_s",
            sizes.connects / elapsed,
            unit="/s",
        ),
        Row("gateway CPU per connect", "ws_connect_cpu_us", cpu_per_connect, unit="µs"),
    ]


def repeated(kind: str, gateway: Target, connections: int, each: int) -> list[LoadRun]:
    """Each message case a few times, after one run that is not counted: the Node stack's
    JIT (and the allocators of both) warm up on it. Measured cold, 200 pings a connection,
    the Node stack took ~18 µs a round trip; warm, ~12 (bench/README.md, "Where a ping's
    time goes")."""
    run_workers(kind, gateway.port, gateway.pid, connections, each, CLIENT_WORKERS)
    return [
        run_workers(kind, gateway.port, gateway.pid, connections, each, CLIENT_WORKERS)
        for _ in range(REPEATS)
    ]


def case_pings(gateway: Target, sizes: Sizes) -> list[Row]:
    runs = repeated("ping", gateway, sizes.ping_connections, sizes.pings_each)
    rate = statistics.median(r.operations / r.seconds for r in runs)
    latencies = sorted(x for r in runs for x in r.latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    cpu = sum(r.gateway_cpu_seconds for r in runs) / sum(r.operations for r in runs)
    return [
        Row(
            f"ping round trips ({sizes.ping_connections} conns, median of {REPEATS})",
            "ping_round_trips_per_s",
            rate,
            unit="/s",
        ),
        Row("ping round trip p99", "ping_p99_ms", p99, unit="ms"),
        Row("ping round trip p50", "ping_p50_ms", statistics.median(latencies) * 1000, unit="ms"),
        Row("gateway CPU per ping round trip", "ping_cpu_us", cpu * 1e6, unit="µs"),
    ]


def case_audio(gateway: Target, sizes: Sizes, streamed: bool = False) -> list[Row]:
    """Frames acknowledged with ``audio_received``: ingest only (a gateway in buffer mode, or
    the Node anchor, which keeps nothing), or each frame streamed on to the backend too."""
    kind = "audio" if gateway.session_protocol else "raw_audio"
    runs = repeated(kind, gateway, sizes.audio_connections, sizes.audio_frames_each)
    rate = statistics.median(r.payload_bytes / r.seconds for r in runs)
    cpu = sum(r.gateway_cpu_seconds for r in runs) / sum(r.operations for r in runs)
    what = "streamed on to the backend" if streamed else "ingest"
    key = "audio_stream" if streamed else "audio_ingest"
    return [
        Row(
            f"audio {what} ({sizes.audio_connections} conns x 4 KB frames, median of {REPEATS})",
            f"{key}_mb_per_s",
            rate / 1e6,
            unit="MB/s",
        ),
        Row(f"gateway CPU per 4 KB audio frame ({what})", f"{key}_cpu_us", cpu * 1e6, unit="µs"),
    ]
