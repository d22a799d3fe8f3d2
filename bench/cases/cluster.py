"""The cluster cases (issue 9): a gateway on the Redis directory, one worker and then
``--workers 2``, against the same backend; and what the Redis directory adds to a connect."""

from __future__ import annotations

import asyncio
import os
import socket

from bench import wrk
from bench.cases.websocket import case_connects
from bench.report import Row
from bench.sizes import Sizes
from bench.targets import GatewayProcess, Nginx, cpu_seconds


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
