"""The three markdown tables ``make bench`` prints: every row with its ratios and verdicts,
the floor table (the empty apps beside the gateway and the Node stack), and the engines table
(the gateway's WebSocket figures on each engine, judged against issue 27's targets)."""

from __future__ import annotations

from bench.report.engines import EngineLine
from bench.report.row import Row

FLOOR_KINDS = ("raw", "litestar", "litestar-accept", "native")
FLOOR_NAMES = {
    "raw": "empty ASGI app",
    "litestar": "empty Litestar app, frames through Litestar's socket",
    "litestar-accept": "empty Litestar app, frames through the server's receive/send",
    "native": "empty ASGI app on the native engine (WS_ENGINE=native)",
}
FLOOR_KEYS = (
    "ping_round_trips_per_s",
    "ping_cpu_us",
    "ping_p99_ms",
    "idle_kb_per_connection",
    "idle_kb_10000",
)


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


def engines_table(lines: list[EngineLine], judged: bool = True) -> str:
    """Each WebSocket figure on the native engine, on uvicorn's, and on the Node stack, the
    engines over Node, and the native engine's verdict (issue 27)."""

    def cell(value: float | None, unit: str) -> str:
        return f"{value:,.1f} {unit}" if value is not None else "—"

    def ratio(value: float | None) -> str:
        return f"{value:.2f}" if value is not None else "—"

    rows = [
        "| figure | native | uvicorn | Node | native/Node | uvicorn/Node "
        "| target for the default (native) |",
        "|---|---|---|---|---|---|---|",
    ]
    rows += [
        f"| {line.figure} | {cell(line.native, line.unit)} | {cell(line.uvicorn, line.unit)} "
        f"| {cell(line.node, line.unit)} | {ratio(line.native_ratio)} "
        f"| {ratio(line.uvicorn_ratio)} | {line.verdict(judged)} |"
        for line in lines
    ]
    return "\n".join(rows)
