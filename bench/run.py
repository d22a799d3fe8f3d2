"""One benchmark run: which targets start, which cases run on each, in what order (memory
first, on processes nothing else ran on; the cluster last), and that every process started
is stopped by pid whatever happens. ``measure`` returns the main table's rows (the gateway on
its default WebSocket engine), the empty apps' rows and the engines table's lines (the
WebSocket cases on both engines, issue 27)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

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
from bench.report import (
    ENGINES,
    FLOOR_KINDS,
    EngineLine,
    Row,
    engine_lines,
    with_floor,
    with_node,
)
from bench.sizes import Sizes
from bench.targets import (
    FloorServer,
    GatewayProcess,
    Nginx,
    NodeAnchor,
    default_ws_engine,
    install_node_anchor,
    node_anchor_missing,
)


@dataclass
class Measured:
    """What one run found: the main table's rows (its gateway on ``default_engine``), the
    empty apps' rows by kind, and the engines table's lines."""

    rows: list[Row]
    floors: dict[str, list[Row]]
    engines: list[EngineLine]
    default_engine: str


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


def websocket_cases(gateway: GatewayProcess, buffering: GatewayProcess, sizes: Sizes) -> list[Row]:
    """Connects, pings, audio ingest alone (on ``buffering``, started and stopped here: what
    the Node anchor does) and audio streamed on to the backend, on one engine's gateways."""
    rows = uvloop.run(run_async_cases([(gateway, case_connects)], sizes))
    rows += case_pings(gateway, sizes)
    buffering.start()
    try:
        rows += case_audio(buffering, sizes)
    finally:
        buffering.stop()
    rows += case_audio(gateway, sizes, streamed=True)
    return rows


def measure(sizes: Sizes) -> Measured:
    """Every case, in order."""
    nginx = Nginx()
    backend_url = f"http://127.0.0.1:{nginx.backend_port}"
    # Every gateway compared names its engine: the main table's runs the settings' default.
    default = default_ws_engine()
    other = next(engine for engine in ENGINES if engine != default)
    on = {engine: {"WS_ENGINE": engine} for engine in ENGINES}
    gateway = GatewayProcess(backend_url=backend_url, extra_env=on[default])
    # The other engine's WebSocket cases (issue 27), on a gateway of its own.
    challenger = GatewayProcess(backend_url=backend_url, extra_env=on[other])
    # Ingest alone (what the Node anchor does) is measured on a gateway that buffers.
    buffering = {
        engine: GatewayProcess(
            backend_url=backend_url, extra_env={**on[engine], "UTTERANCE_UPLOAD": "buffer"}
        )
        for engine in ENGINES
    }
    stub = GatewayProcess(backend_url=backend_url, backend_mode="stub", extra_env=on[default])
    why_no_node = node_anchor_missing()
    node = NodeAnchor(backend_url=backend_url) if why_no_node is None else None
    if why_no_node is not None:
        print(f"bench: the Node column stays empty: {why_no_node}", file=sys.stderr)
    floors: dict[str, list[Row]] = {}
    node_rows: list[Row] = []  # the Node anchor's own figures, for the engines table
    try:
        nginx.start()
        if node is not None:
            try:
                install_node_anchor()
            except (OSError, subprocess.CalledProcessError) as exc:
                print(f"bench: the Node column stays empty: npm ci failed ({exc})", file=sys.stderr)
                node = None
        # Memory first, on a gateway (one per engine, and a Node anchor) of its own that
        # nothing else ran on.
        memory = {
            engine: uvloop.run(
                case_memory(partial(GatewayProcess, backend_url, extra_env=on[engine]), sizes)
            )
            for engine in (default, other)
        }
        rows = list(memory[default])
        floors = {kind: floor_memory(kind, sizes) for kind in FLOOR_KINDS}
        with_floor(rows, floors["raw"])
        if node is not None:
            node_rows += uvloop.run(case_memory(lambda: NodeAnchor(backend_url=backend_url), sizes))
            with_node(rows, node_rows)
            node.start()
        gateway.start()
        stub.start()
        rows += case_proxy(gateway, nginx, sizes, node)
        rows += case_tracing(backend_url, sizes)  # two gateways of its own: off, then on
        single = websocket_cases(gateway, buffering[default], sizes)
        challenger.start()
        try:
            other_rows = websocket_cases(challenger, buffering[other], sizes)
        finally:
            challenger.stop()
        for kind in FLOOR_KINDS:
            floor = FloorServer(kind=kind)
            floor.start()
            try:
                if kind in ("raw", "native"):
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
            node_rows += theirs
            with_node(single, theirs)
            node.stop()
        engines = engine_lines(
            {default: memory[default] + single, other: memory[other] + other_rows},
            node_rows,
            sizes.idle_steps,
        )
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
        challenger.stop()
        for idle in buffering.values():
            idle.stop()
        if node is not None:
            node.stop()
        nginx.stop()
    return Measured(rows, floors, engines, default)
