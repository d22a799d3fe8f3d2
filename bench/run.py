"""One benchmark run: which targets start, which cases run on each, in what order (memory
first, on processes nothing else ran on; the cluster last), and that every process started
is stopped by pid whatever happens. ``measure`` returns the main table's rows and the empty
apps' rows."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable

import uvloop

from bench.cases import (
    case_audio,
    case_black_hole,
    case_cluster,
    case_connects,
    case_flood,
    case_idle_tax,
    case_memory,
    case_pings,
    case_proxy,
    case_reply_audio,
    case_stop_to_transcription,
    case_tracing,
    case_turn_burst,
    case_turns,
    case_upload_memory,
)
from bench.report import FLOOR_KINDS, Row, with_floor, with_node
from bench.sizes import Sizes
from bench.targets import (
    FloorServer,
    GatewayProcess,
    Nginx,
    NodeAnchor,
    install_node_anchor,
    node_anchor_missing,
)


def floor_memory(kind: str, sizes: Sizes) -> list[Row]:
    return uvloop.run(case_memory(lambda: FloorServer(kind=kind), sizes))


async def run_async_cases(
    cases: list[tuple[GatewayProcess, Callable[[GatewayProcess, Sizes], Awaitable[list[Row]]]]],
    sizes: Sizes,
) -> list[Row]:
    rows: list[Row] = []
    for gateway, case in cases:
        rows += await case(gateway, sizes)
    return rows


def measure(sizes: Sizes) -> tuple[list[Row], dict[str, list[Row]]]:
    """Every case, in order: (the main table's rows, the empty apps' rows by kind)."""
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
        rows += case_tracing(backend_url, sizes)  # two gateways of its own: off, then on
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
        rows += uvloop.run(case_reply_audio(sizes))
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
    return rows, floors
