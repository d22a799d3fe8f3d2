"""The memory case: RSS per idle connection on a target started for it alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bench.cases.clients import Target, bounded, close_all, connect_many, until_zero
from bench.report import Row
from bench.sizes import Sizes
from bench.targets import rss_kb
from bench.wsload import WsClient


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
