"""``make bench``: the gateway against an nginx baseline, one run, one table.

Starts nginx (a fast backend stand-in plus an nginx /api proxy as the baseline) and two
gateways (``BACKEND_MODE=http`` against nginx, ``BACKEND_MODE=stub`` for voice turns), all on
127.0.0.1, measures, prints a markdown table, writes JSON, and stops everything by pid.
Every load loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from bench import wrk
from bench.flood import paced_pings, start_flood
from bench.idle import IdleSockets
from bench.services import (
    BENCH_DIR,
    SECRET,
    FloorServer,
    GatewayProcess,
    Nginx,
    NodeAnchor,
    UploadBackend,
    cpu_seconds,
    ensure_tools,
    install_node_anchor,
    node_anchor_missing,
    rss_kb,
)
from bench.workers import LoadRun, run_workers
from bench.wsload import BINARY, TEXT, WsClient, client_frame, open_client
from kalami_gateway.adapters.jwt_decoder import mint_token

T = TypeVar("T")
CASE_DEADLINE_S = 120.0  # no case may run longer than this, whatever the counts
# Load-generating client processes for the message cases: one Python client cannot keep up
# with the gateway, so it would measure itself (it shares the machine's 2 cores with it).
CLIENT_WORKERS = 2
REPEATS = 3


@dataclass
class Sizes:
    wrk_seconds: int
    wrk_connections: int
    connects: int
    connect_concurrency: int
    ping_connections: int
    pings_each: int
    audio_connections: int
    audio_frames_each: int
    idle_steps: tuple[int, ...]
    turn_connections: int
    turns_each: int
    burst_turns: int
    upload_connections: int  # streaming many utterances at once (issue 13)
    upload_bytes: int  # each one's size
    latency_upload_bytes: int  # the utterance whose stop -> transcription is timed
    idle_tax_sockets: int  # idle sockets held while the proxy is measured (issue 15)


FULL = Sizes(
    10, 64, 1000, 50, 50, 200, 20, 100, (2000, 10000), 20, 10, 250, 200, 8 << 20, 5 << 20, 5000
)
SMOKE = Sizes(1, 4, 20, 5, 4, 10, 2, 5, (20, 40), 2, 2, 5, 4, 256 << 10, 256 << 10, 50)
IDLE_HEARTBEAT_MS = 5000  # the idle-tax case's heartbeat: phones on a short keepalive
UPLOAD_FRAME = 4096
UPLOAD_WINDOW_FRAMES = 32  # frames a client has in flight before it waits for acknowledgements
BACKEND_REPLY_DELAY_S = 0.05  # the upload backend answers this long after a body's end

# The Node/Express original on this kind of machine (issue 6): what "at least as good" means.
TARGETS: dict[str, tuple[str, float]] = {
    "proxy_get_rps": (">=", 5400),
    "proxy_get_p99_ms": ("<=", 75),
    "proxy_post_rps": (">=", 5000),
    "ws_connects_per_s": (">=", 1500),
    "ping_round_trips_per_s": (">=", 48000),
    "ping_p99_ms": ("<=", 5),
    "audio_ingest_mb_per_s": (">=", 70),
    "idle_kb_per_connection": ("<=", 12),  # issue 15: half of the 24 KB measured fresh
    "workers_connect_speedup": (">=", 1.7),
    "workers_proxy_speedup": (">=", 1.7),
    "upload_rss_growth_stream_mb": ("<=", 100),
    "idle_tax_p99_ratio": ("<=", 1.5),
    "idle_tax_rps_ratio": (">=", 0.9),
    "stop_to_transcription_stream_ms": ("<=", 70),
    "burst_cold_cpu_ms": ("<=", 500),
    "burst_warm_cpu_ms": ("<=", 500),
    "black_hole_late_ms": ("<=", 100),
    "flood_p99_ratio": ("<=", 2),
}


# Issue 15: the gateway against the Node stack it replaces, measured in the same run.
NODE_TARGETS: dict[str, tuple[str, float]] = {
    "proxy_get_rps": (">=", 2.0),
    "proxy_post_rps": (">=", 2.0),
    "ws_connects_per_s": (">=", 1.3),
    "ping_round_trips_per_s": (">=", 1.1),
    "ping_p99_ms": ("<=", 1.0),
    "audio_ingest_mb_per_s": (">=", 1.0),
}
Target = GatewayProcess | NodeAnchor | FloorServer


def _ratio(value: float | None, baseline: float | None) -> float | None:
    return None if value is None or not baseline else value / baseline


@dataclass
class Row:
    figure: str
    key: str
    gateway: float
    nginx: float | None = None
    unit: str = ""
    node: float | None = None
    floor: float | None = None  # the empty app on the gateway's server (bench/floor.py)

    @property
    def floor_ratio(self) -> float | None:
        """The empty app against Node: how far the server stack alone gets."""
        return _ratio(self.floor, self.node)

    @property
    def node_ratio(self) -> float | None:
        return _ratio(self.gateway, self.node)

    def node_verdict(self, judged: bool = True) -> str:
        target = NODE_TARGETS.get(self.key)
        ratio = self.node_ratio
        if target is None or ratio is None:
            return ""
        op, value = target
        if not judged:
            return f"{op} {value:g}x (smoke: not judged)"
        met = ratio >= value if op == ">=" else ratio <= value
        return f"{op} {value:g}x: {'yes' if met else 'NO'}"

    @property
    def ratio(self) -> float | None:
        return _ratio(self.gateway, self.nginx)

    def verdict(self, judged: bool = True) -> str:
        target = TARGETS.get(self.key)
        if target is None:
            return ""
        op, value = target
        if not judged:
            return f"{op} {value:g} (smoke: not judged)"
        met = self.gateway >= value if op == ">=" else self.gateway <= value
        return f"{op} {value:g}: {'yes' if met else 'NO'}"


async def bounded(coro: Awaitable[T]) -> T:
    return await asyncio.wait_for(coro, CASE_DEADLINE_S)


def token(user: str) -> str:
    return mint_token(SECRET, user, time.time() + 3600)


def stats(gateway: Target) -> dict[str, Any]:
    with urllib.request.urlopen(f"{gateway.http}/stats", timeout=5) as response:  # noqa: S310
        body: dict[str, Any] = json.loads(response.read())
        return body


async def connect_many(port: int, count: int, concurrency: int) -> list[WsClient]:
    # Tokens are minted before the clock starts: signing is the client's cost, not the gateway's.
    tokens = [token(f"user-{n}") for n in range(min(count, 500))]
    return await connect_with(port, [tokens[n % len(tokens)] for n in range(count)], concurrency)


async def connect_with(port: int, tokens: list[str], concurrency: int) -> list[WsClient]:
    gate = asyncio.Semaphore(concurrency)

    async def one(user_token: str) -> WsClient:
        async with gate:
            return await open_client(port, user_token)

    return list(await asyncio.gather(*(one(t) for t in tokens)))


def close_all(clients: list[WsClient]) -> None:
    for client in clients:
        client.close()


def open_connections(target: Target) -> int:
    """What /stats says: the cluster's figure (the gateway), or the process's (Node)."""
    body = stats(target)
    count: int = (body.get("cluster") or body["websocket"])["connections"]
    return count


async def until_zero(gateway: Target) -> None:
    for _ in range(200):
        if open_connections(gateway) == 0:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("connections did not drain after the clients closed")


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
    """The short message cases are over in well under a second: run each a few times."""
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


async def start_session(client: WsClient, expect: bytes = b'"session_started"') -> None:
    client.send(client_frame(TEXT, b'{"type":"start_session","payload":{"profileId":"bench"}}'))
    reply = await client.recv()
    if expect not in reply:
        raise RuntimeError(f"start_session failed: {reply[:120]!r}")


async def case_memory(make: Callable[[], Target], sizes: Sizes) -> list[Row]:
    """RSS per idle connection on a freshly started gateway, before any other case ran on it:
    a process that served other loads first hides the cost in the allocator's freed pools
    (issue 15: 9-12 KB measured that way against 23.6-24.4 KB fresh)."""
    gateway = make()
    rows: list[Row] = []
    held: list[WsClient] = []
    try:
        gateway.start()
        await asyncio.sleep(0.5)
        before = rss_kb(gateway.pid)
        rows.append(Row("gateway RSS, fresh and idle", "rss_idle_mb", before / 1024, unit="MB"))
        for total in sizes.idle_steps:
            held += await bounded(connect_many(gateway.port, total - len(held), 100))
            await asyncio.sleep(1.0)
            after = rss_kb(gateway.pid)
            rows += [
                Row(f"gateway RSS, {total} idle conns", f"rss_{total}_mb", after / 1024, unit="MB"),
                Row(
                    f"memory per idle connection ({total}, fresh process)",
                    "idle_kb_per_connection"
                    if total == sizes.idle_steps[0]
                    else f"idle_kb_{total}",
                    (after - before) / total,
                    unit="KB",
                ),
            ]
        close_all(held)
        await until_zero(gateway)
    finally:
        gateway.stop()
    return rows


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


def case_proxy(
    gateway: GatewayProcess, nginx: Nginx, sizes: Sizes, node: NodeAnchor | None = None
) -> list[Row]:
    rows = []
    for post, path, label in (
        (False, "/api/users/me", "GET"),
        (True, "/api/conversations/sessions", "POST 1 KB JSON"),
    ):
        cpu_before = cpu_seconds(gateway.pid)
        ours = wrk.run(f"{gateway.http}{path}", sizes.wrk_connections, sizes.wrk_seconds, post=post)
        cpu_per_request = (cpu_seconds(gateway.pid) - cpu_before) / max(1, ours.requests) * 1e6
        theirs = wrk.run(
            f"http://127.0.0.1:{nginx.proxy_port}{path}",
            sizes.wrk_connections,
            sizes.wrk_seconds,
            post=post,
        )
        if ours.errors:
            raise RuntimeError(f"{label} through the gateway: {ours.errors} errors")
        node_run = None
        if node is not None:
            node_run = wrk.run(
                f"{node.http}{path}", sizes.wrk_connections, sizes.wrk_seconds, post=post
            )
        key = "proxy_post" if post else "proxy_get"
        rows += [
            Row(
                f"proxy {label}, -c{sizes.wrk_connections}",
                f"{key}_rps",
                ours.requests_per_second,
                theirs.requests_per_second,
                "req/s",
                node_run.requests_per_second if node_run else None,
            ),
            Row(
                f"proxy {label} p50",
                f"{key}_p50_ms",
                ours.p50_ms,
                theirs.p50_ms,
                "ms",
                node_run.p50_ms if node_run else None,
            ),
            Row(
                f"proxy {label} p99",
                f"{key}_p99_ms",
                ours.p99_ms,
                theirs.p99_ms,
                "ms",
                node_run.p99_ms if node_run else None,
            ),
            Row(f"gateway CPU per proxied {label}", f"{key}_cpu_us", cpu_per_request, unit="µs"),
        ]
    return rows


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


async def case_flood(sizes: Sizes, backend_url: str) -> list[Row]:
    """Issue 11: one socket floods pings while 50 others ping every 50 ms; the others' p99
    with and without the flood, and the flooder's achieved rate — with the default
    per-connection rate limits (50 messages/s, burst 100)."""
    gateway = GatewayProcess(
        backend_url=backend_url,
        extra_env={"WS_MESSAGE_RATE": "50", "WS_AUDIO_RATE": "1048576", "WS_FRAME_RATE": "400"},
    )
    others = [token(f"calm-{n}") for n in range(sizes.ping_connections)]
    seconds = 2.0 if sizes is SMOKE else 6.0
    try:
        gateway.start()
        quiet = sorted(await paced_pings(gateway.port, others, seconds, 0.05))
        pool, flooding = start_flood(gateway.port, token("flooder"), seconds + 2)
        await asyncio.sleep(1.0)  # the flood is under way
        loud = sorted(await paced_pings(gateway.port, others, seconds, 0.05))
        pongs, flood_seconds = flooding.get(timeout=seconds + 60)
        pool.close()
        pool.join()
    finally:
        gateway.stop()

    def p99(values: list[float]) -> float:
        return values[min(len(values) - 1, int(len(values) * 0.99))] * 1000

    return [
        Row(
            "others' ping p99, quiet (50 conns, 20/s each)",
            "flood_quiet_p99_ms",
            p99(quiet),
            unit="ms",
        ),
        Row("others' ping p99, one socket flooding", "flood_loud_p99_ms", p99(loud), unit="ms"),
        Row("  flooded / quiet", "flood_p99_ratio", p99(loud) / max(p99(quiet), 1e-6), unit="x"),
        Row("flooder's achieved rate (limit 50/s)", "flood_rate", pongs / flood_seconds, unit="/s"),
    ]


def redis_server_pid() -> int:
    """The local redis-server's pid (its CPU is part of what the directory costs)."""
    with socket.create_connection(("127.0.0.1", 6379), timeout=3) as conn:
        conn.sendall(b"INFO server\r\n")
        reply = b""
        while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
    for line in reply.decode().splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    raise RuntimeError("redis-server did not say its process id")


async def case_cluster(nginx: Nginx, single: list[Row], sizes: Sizes) -> list[Row]:
    """--workers 2 against one worker (both on the Redis directory), and what the Redis
    directory adds to a connect, against the in-memory one measured before."""
    prefix = {"REDIS_URL": "redis://127.0.0.1:6379/0", "REDIS_KEY_PREFIX": f"bench-{os.getpid()}:"}
    backend = f"http://127.0.0.1:{nginx.backend_port}"
    one = GatewayProcess(backend_url=backend, extra_env=prefix)
    two = GatewayProcess(backend_url=backend, extra_env=prefix, workers=2)
    redis_pid = redis_server_pid()
    rows: list[Row] = []
    try:
        one.start()
        redis_before = cpu_seconds(redis_pid)
        connects_one = await case_connects(one, sizes)
        redis_per_connect = (cpu_seconds(redis_pid) - redis_before) / sizes.connects * 1e6
        one_get = wrk.run(f"{one.http}/api/users/me", sizes.wrk_connections, sizes.wrk_seconds)
        one.stop()
        two.start()
        await asyncio.sleep(1.0)  # both workers up and in the directory
        connects_two = await case_connects(two, sizes)
        two_get = wrk.run(f"{two.http}/api/users/me", sizes.wrk_connections, sizes.wrk_seconds)
    finally:
        one.stop()
        two.stop()
    memory_cpu = next(r.gateway for r in single if r.key == "ws_connect_cpu_us")
    connect_speedup = connects_two[0].gateway / connects_one[0].gateway
    proxy_speedup = two_get.requests_per_second / one_get.requests_per_second
    rows += [
        Row(
            "WS connects, Redis directory, 1 worker",
            "redis_ws_connects_per_s",
            connects_one[0].gateway,
            unit="/s",
        ),
        Row(
            "gateway CPU per connect, Redis directory",
            "redis_ws_connect_cpu_us",
            connects_one[1].gateway,
            unit="µs",
        ),
        Row(
            "  of which the Redis directory (vs in memory)",
            "redis_directory_cpu_us",
            connects_one[1].gateway - memory_cpu,
            unit="µs",
        ),
        Row("redis-server CPU per connect", "redis_server_cpu_us", redis_per_connect, unit="µs"),
        Row(
            "WS connects, --workers 2",
            "workers_ws_connects_per_s",
            connects_two[0].gateway,
            unit="/s",
        ),
        Row("  speedup over 1 worker", "workers_connect_speedup", connect_speedup, unit="x"),
        Row(
            "proxy GET, Redis directory, 1 worker",
            "redis_proxy_get_rps",
            one_get.requests_per_second,
            unit="req/s",
        ),
        Row(
            "proxy GET, --workers 2",
            "workers_proxy_get_rps",
            two_get.requests_per_second,
            unit="req/s",
        ),
        Row("  speedup over 1 worker", "workers_proxy_speedup", proxy_speedup, unit="x"),
    ]
    return rows


async def stream_utterance(client: WsClient, size: int) -> None:
    """start_recording, then ``size`` bytes in 4 KiB frames, a window of them in flight."""
    client.send(client_frame(TEXT, b'{"type":"start_recording","payload":{"format":"webm"}}'))
    await client.recv()
    frame = client_frame(BINARY, bytes(UPLOAD_FRAME))
    frames = size // UPLOAD_FRAME
    sent = acked = 0
    while acked < frames:
        while sent < frames and sent - acked < UPLOAD_WINDOW_FRAMES:
            client.send(frame)
            sent += 1
        reply = await client.recv()
        if b'"audio_received"' in reply:
            acked += 1
        elif b'"error"' in reply:
            raise RuntimeError(f"upload failed: {reply[:160]!r}")


async def transcription_after_stop(client: WsClient) -> float:
    """Seconds from sending stop_recording to the transcription."""
    started = time.perf_counter()
    client.send(client_frame(TEXT, b'{"type":"stop_recording"}'))
    while b'"transcription"' not in (reply := await client.recv()):
        if b'"error"' in reply:
            raise RuntimeError(f"turn failed: {reply[:160]!r}")
    elapsed = time.perf_counter() - started
    while b'"type":"audio"' not in await client.recv():
        pass
    return elapsed


class UploadGateway:
    """A fresh gateway (stream or buffer mode) in front of the upload backend stand-in."""

    def __init__(self, mode: str, delay: float) -> None:
        self.backend = UploadBackend(delay)
        self.gateway = GatewayProcess(
            backend_url=self.backend.url,
            extra_env={"UTTERANCE_UPLOAD": mode, "MAX_AUDIO_BYTES": str(16 << 20)},
        )

    def __enter__(self) -> GatewayProcess:
        self.backend.start()
        self.gateway.start()
        return self.gateway

    def __exit__(self, *_: object) -> None:
        self.gateway.stop()
        self.backend.stop()


async def case_upload_memory(mode: str, sizes: Sizes) -> list[Row]:
    """Issue 13: many learners speaking long utterances at once; the gateway's peak RSS
    growth while they stream (buffered, every utterance is held whole until its stop)."""
    count, size = sizes.upload_connections, sizes.upload_bytes
    with UploadGateway(mode, BACKEND_REPLY_DELAY_S) as gateway:
        clients = await bounded(connect_many(gateway.port, count, 50))
        await bounded(asyncio.gather(*(start_session(c) for c in clients)))
        await asyncio.sleep(0.5)
        base = peak = rss_kb(gateway.pid)
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_kb(gateway.pid))
                await asyncio.sleep(0.05)

        async def one(client: WsClient) -> None:
            await stream_utterance(client, size)
            await transcription_after_stop(client)

        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(one(c) for c in clients)), 300)
        finally:
            done.set()
            await sampler
        elapsed = time.perf_counter() - started
        close_all(clients)
    mib = size / (1 << 20)
    return [
        Row(
            f"peak RSS growth, {count} conns each streaming {mib:g} MiB ({mode} mode)",
            f"upload_rss_growth_{mode}_mb",
            (peak - base) / 1024,
            unit="MB",
        ),
        Row(
            f"audio through the gateway to the backend ({mode} mode)",
            f"upload_mb_per_s_{mode}",
            count * size / elapsed / 1e6,
            unit="MB/s",
        ),
    ]


async def case_stop_to_transcription(mode: str, sizes: Sizes) -> list[Row]:
    """Issue 13: from stop_recording to the transcription for one utterance, against a
    backend that answers 50 ms after the body ends (median of 5)."""
    with UploadGateway(mode, BACKEND_REPLY_DELAY_S) as gateway:
        [client] = await bounded(connect_many(gateway.port, 1, 1))
        await start_session(client)
        timings = []
        for _ in range(5):
            await stream_utterance(client, sizes.latency_upload_bytes)
            await asyncio.sleep(0.2)  # the learner stops after the last frame is through
            timings.append(await transcription_after_stop(client))
        close_all([client])
    mib = sizes.latency_upload_bytes / (1 << 20)
    return [
        Row(
            f"stop_recording -> transcription, {mib:g} MiB utterance, backend 50 ms ({mode})",
            f"stop_to_transcription_{mode}_ms",
            statistics.median(timings) * 1000,
            unit="ms",
        )
    ]


def case_idle_tax(nginx: Nginx, sizes: Sizes) -> list[Row]:
    """Issue 15: idle sockets must not tax the proxy. ``/api`` GET on a fresh gateway (heartbeat
    every 5 s), then again while ``idle_tax_sockets`` idle sockets are held by another process
    that answers the pings."""
    gateway = GatewayProcess(
        backend_url=f"http://127.0.0.1:{nginx.backend_port}",
        extra_env={"WS_HEARTBEAT_INTERVAL": str(IDLE_HEARTBEAT_MS)},
    )
    url = f"{gateway.http}/api/users/me"
    try:
        gateway.start()
        wrk.run(url, sizes.wrk_connections, 1)  # warm-up
        cpu_before = cpu_seconds(gateway.pid)
        alone = wrk.run(url, sizes.wrk_connections, sizes.wrk_seconds)
        alone_cpu = (cpu_seconds(gateway.pid) - cpu_before) / max(1, alone.requests)
        with IdleSockets(gateway.port, sizes.idle_tax_sockets) as idle:
            time.sleep(IDLE_HEARTBEAT_MS / 1000 + 1)  # their pings are under way
            cpu_before = cpu_seconds(gateway.pid)
            time.sleep(5)
            idle_cpu = (cpu_seconds(gateway.pid) - cpu_before) / 5
            cpu_before = cpu_seconds(gateway.pid)
            holder_before = cpu_seconds(idle.pid)
            started = time.perf_counter()
            crowded = wrk.run(url, sizes.wrk_connections, sizes.wrk_seconds)
            crowded_cpu = (cpu_seconds(gateway.pid) - cpu_before) / max(1, crowded.requests)
            holder_cpu = (cpu_seconds(idle.pid) - holder_before) / (time.perf_counter() - started)
            dropped = idle.release()
        if dropped:
            raise RuntimeError(f"the gateway dropped {dropped} idle sockets that answered pings")
    finally:
        gateway.stop()
    n = sizes.idle_tax_sockets
    return [
        Row("proxy GET p99, no idle sockets", "idle_tax_p99_alone_ms", alone.p99_ms, unit="ms"),
        Row(f"proxy GET p99, {n} idle sockets", "idle_tax_p99_ms", crowded.p99_ms, unit="ms"),
        Row("  with / without", "idle_tax_p99_ratio", crowded.p99_ms / alone.p99_ms, unit="x"),
        Row(
            "proxy GET, no idle sockets", "idle_tax_rps_alone", alone.requests_per_second, unit="/s"
        ),
        Row(f"proxy GET, {n} idle sockets", "idle_tax_rps", crowded.requests_per_second, unit="/s"),
        Row(
            "  with / without",
            "idle_tax_rps_ratio",
            crowded.requests_per_second / alone.requests_per_second,
            unit="x",
        ),
        Row(
            f"gateway CPU while {n} sockets idle (heartbeat 5 s)",
            "idle_tax_cpu_pct",
            idle_cpu * 100,
            unit="% of a core",
        ),
        Row(
            "gateway CPU per GET, no idle sockets",
            "idle_tax_get_cpu_alone_us",
            alone_cpu * 1e6,
            unit="µs",
        ),
        Row(
            f"gateway CPU per GET, {n} idle sockets",
            "idle_tax_get_cpu_us",
            crowded_cpu * 1e6,
            unit="µs",
        ),
        Row(
            "CPU of the process holding the idle sockets, meanwhile",
            "idle_tax_holder_cpu_pct",
            holder_cpu * 100,
            unit="% of a core",
        ),
    ]


def with_node(rows: list[Row], node_rows: list[Row]) -> list[Row]:
    """``rows`` with the Node anchor's figure of the same key beside the gateway's."""
    theirs = {r.key: r.gateway for r in node_rows}
    for row in rows:
        if row.key in theirs:
            row.node = theirs[row.key]
    return rows


FLOOR_KINDS = ("raw", "litestar", "litestar-accept")
FLOOR_NAMES = {
    "raw": "empty ASGI app",
    "litestar": "empty Litestar app, frames through Litestar's socket",
    "litestar-accept": "empty Litestar app, frames through the server's receive/send",
}
FLOOR_KEYS = (
    "ping_round_trips_per_s",
    "ping_cpu_us",
    "ping_p99_ms",
    "idle_kb_per_connection",
    "idle_kb_10000",
)


def floor_memory(kind: str, sizes: Sizes) -> list[Row]:
    return uvloop.run(case_memory(lambda: FloorServer(kind=kind), sizes))


def floor_table(rows: list[Row], floors: dict[str, list[Row]]) -> str:
    """The socket path's floor: apps that only answer, on the gateway's server stack, beside
    the gateway and the Node stack (issue 15: what the stack allows before our code runs)."""
    ours = {r.key: r for r in rows}
    names = [ours[k].figure for k in FLOOR_KEYS if k in ours]
    lines = [
        "| server app | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]

    def line(name: str, values: dict[str, float | None]) -> str:
        cells = [
            f"{values[k]:,.1f} {ours[k].unit}" if values.get(k) is not None else "—"
            for k in FLOOR_KEYS
            if k in ours
        ]
        return f"| {name} | " + " | ".join(cells) + " |"

    for kind in FLOOR_KINDS:
        lines.append(line(FLOOR_NAMES[kind], {r.key: r.gateway for r in floors.get(kind, [])}))
    lines.append(line("the gateway", {k: r.gateway for k, r in ours.items()}))
    lines.append(line("the Node stack", {k: r.node for k, r in ours.items()}))
    return "\n".join(lines)


def with_floor(rows: list[Row], floor_rows: list[Row]) -> list[Row]:
    """``rows`` with the empty app's figure of the same key beside the gateway's."""
    theirs = {r.key: r.gateway for r in floor_rows}
    for row in rows:
        if row.key in theirs:
            row.floor = theirs[row.key]
    return rows


def table(rows: list[Row], judged: bool = True) -> str:
    lines = [
        "| figure | gateway | Node | gateway/Node | vs Node | empty app | empty/Node "
        "| nginx | gateway/nginx | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        nginx = f"{row.nginx:,.1f} {row.unit}" if row.nginx is not None else "—"
        ratio = f"{row.ratio:.3f}" if row.ratio is not None else "—"
        node = f"{row.node:,.1f} {row.unit}" if row.node is not None else "—"
        node_ratio = f"{row.node_ratio:.2f}" if row.node_ratio is not None else "—"
        floor = f"{row.floor:,.1f} {row.unit}" if row.floor is not None else "—"
        floor_ratio = f"{row.floor_ratio:.2f}" if row.floor_ratio is not None else "—"
        gateway = f"{row.gateway:,.1f} {row.unit}"
        lines.append(
            f"| {row.figure} | {gateway} | {node} | {node_ratio} | {row.node_verdict(judged)} "
            f"| {floor} | {floor_ratio} | {nginx} | {ratio} | {row.verdict(judged)} |"
        )
    return "\n".join(lines)


async def run_async_cases(
    cases: list[tuple[GatewayProcess, Callable[[GatewayProcess, Sizes], Awaitable[list[Row]]]]],
    sizes: Sizes,
) -> list[Row]:
    rows: list[Row] = []
    for gateway, case in cases:
        rows += await case(gateway, sizes)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny counts: checks the harness works"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ensure_tools()
    nginx = Nginx()
    backend_url = f"http://127.0.0.1:{nginx.backend_port}"
    gateway = GatewayProcess(backend_url=backend_url)
    # Ingest alone (what the Node anchor does) is measured on a gateway that buffers.
    buffering = GatewayProcess(backend_url=backend_url, extra_env={"UTTERANCE_UPLOAD": "buffer"})
    stub = GatewayProcess(backend_url=backend_url, backend_mode="stub")
    why_no_node = node_anchor_missing()
    node = NodeAnchor(backend_url=backend_url) if why_no_node is None else None
    if why_no_node is not None:
        print(f"bench: the Node column stays empty: {why_no_node}", file=sys.stderr)
    floors: dict[str, list[Row]] = {}
    try:
        nginx.start()
        if node is not None:
            try:
                install_node_anchor()
            except (OSError, subprocess.CalledProcessError) as exc:
                print(f"bench: the Node column stays empty: npm ci failed ({exc})", file=sys.stderr)
                node = None
        # Memory first, on a gateway (and a Node anchor) of its own that nothing else ran on.
        rows = uvloop.run(case_memory(lambda: GatewayProcess(backend_url=backend_url), sizes))
        floors = {kind: floor_memory(kind, sizes) for kind in FLOOR_KINDS}
        with_floor(rows, floors["raw"])
        if node is not None:
            with_node(
                rows, uvloop.run(case_memory(lambda: NodeAnchor(backend_url=backend_url), sizes))
            )
            node.start()
        gateway.start()
        stub.start()
        rows += case_proxy(gateway, nginx, sizes, node)
        single = uvloop.run(run_async_cases([(gateway, case_connects)], sizes))
        single += case_pings(gateway, sizes)
        buffering.start()
        single += case_audio(buffering, sizes)
        buffering.stop()
        single += case_audio(gateway, sizes, streamed=True)
        for kind in FLOOR_KINDS:
            floor = FloorServer(kind=kind)
            floor.start()
            try:
                if kind == "raw":
                    floors[kind] += uvloop.run(case_connects(floor, sizes))
                    floors[kind] += case_audio(floor, sizes)
                floors[kind] += case_pings(floor, sizes)
            finally:
                floor.stop()
        with_floor(single, floors["raw"])
        if node is not None:
            theirs = uvloop.run(case_connects(node, sizes))
            theirs += case_pings(node, sizes)
            theirs += case_audio(node, sizes)
            with_node(single, theirs)
            node.stop()
        rows += single
        rows += uvloop.run(run_async_cases([(stub, case_turns)], sizes))
        rows += uvloop.run(run_async_cases([(gateway, case_turn_burst)], sizes))
        rows += uvloop.run(case_black_hole(nginx, sizes))
        rows += uvloop.run(case_flood(sizes, f"http://127.0.0.1:{nginx.backend_port}"))
        rows += case_idle_tax(nginx, sizes)
        for mode in ("stream", "buffer"):
            rows += uvloop.run(case_stop_to_transcription(mode, sizes))
        for mode in ("stream", "buffer"):
            rows += uvloop.run(case_upload_memory(mode, sizes))
        stub.stop()
        gateway.stop()
        rows += uvloop.run(case_cluster(nginx, rows, sizes))
    finally:
        stub.stop()
        gateway.stop()
        buffering.stop()
        if node is not None:
            node.stop()
        nginx.stop()
    print(table(rows, judged=not args.smoke))
    print()
    print(floor_table(rows, floors))
    out = (
        args.out
        or BENCH_DIR
        / "results"
        / f"bench-{'smoke-' if args.smoke else ''}{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "sizes": asdict(sizes),
                "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
                "floors": {kind: [asdict(r) for r in found] for kind, found in floors.items()},
            },
            indent=2,
        )
    )
    print(f"\nJSON: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
