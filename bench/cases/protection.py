"""The flood case (issue 11): the per-connection rate limits protecting the other sockets
from one that floods (its client processes: ``bench/flood.py``)."""

from __future__ import annotations

import asyncio

from bench.cases.clients import token
from bench.flood import paced_pings, start_flood
from bench.report import Row
from bench.sizes import SMOKE, Sizes
from bench.targets import GatewayProcess


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
