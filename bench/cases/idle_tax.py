"""The idle-tax case (issue 15): what idle sockets, held by another process that answers the
gateway's pings, cost the ``/api`` proxy (its client process: ``bench/idle.py``)."""

from __future__ import annotations

import time

from bench import wrk
from bench.idle import IdleSockets
from bench.report import Row
from bench.sizes import Sizes
from bench.targets import GatewayProcess, Nginx, cpu_seconds

IDLE_HEARTBEAT_MS = 5000  # the idle-tax case's heartbeat: phones on a short keepalive


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
