"""The engines table's lines (issue 27): each WebSocket figure of the gateway on both of its
engines (``WS_ENGINE=native`` and ``uvicorn``), the Node stack's beside them, and the native
engine judged against ``ENGINE_TARGETS``: the figures that decide whether it becomes the
default."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.report.row import Row
from bench.report.thresholds import ENGINE_TARGETS, EngineTarget

ENGINES = ("native", "uvicorn")  # the table's columns, in this order
JUDGED_ENGINE = "native"  # the one issue 27's targets are for

# The socket cases' figures, in the table's order (the memory case's follow, by idle step).
SOCKET_KEYS = (
    "ws_connects_per_s",
    "ws_connect_cpu_us",
    "ping_round_trips_per_s",
    "ping_p50_ms",
    "ping_p99_ms",
    "ping_cpu_us",
    "audio_ingest_mb_per_s",
    "audio_ingest_cpu_us",
    "audio_stream_mb_per_s",
    "audio_stream_cpu_us",
)
# The Node stack streams nothing to a backend (it keeps nothing): the gateway streaming is set
# beside what Node does with a frame, its ingest. A judged row's target names its own.
NODE_STAND_INS = {
    "audio_stream_mb_per_s": "audio_ingest_mb_per_s",
    "audio_stream_cpu_us": "audio_ingest_cpu_us",
}


def _ratio(value: float | None, baseline: float | None) -> float | None:
    return None if value is None or not baseline else value / baseline


def memory_keys(idle_steps: Sequence[int]) -> tuple[str, ...]:
    """The memory case's per-connection keys: its first step's, then each later step's
    (``idle_kb_10000`` at full size; the smoke run's steps are smaller)."""
    return ("idle_kb_per_connection", *(f"idle_kb_{total}" for total in idle_steps[1:]))


def node_key_for(key: str) -> str:
    """The key of the Node figure a row is compared with: its target's, if it is judged
    against Node, else the row's own (or its stand-in's)."""
    target = ENGINE_TARGETS.get(key)
    if target is not None and target.against is not None:
        return target.against
    return NODE_STAND_INS.get(key, key)


@dataclass
class EngineLine:
    """One figure on both engines and on the Node stack (``node``: the figure of
    ``node_key``, which for the streamed audio is Node's ingest)."""

    figure: str
    key: str
    unit: str
    native: float | None
    uvicorn: float | None
    node: float | None
    node_key: str

    @property
    def native_ratio(self) -> float | None:
        return _ratio(self.native, self.node)

    @property
    def uvicorn_ratio(self) -> float | None:
        return _ratio(self.uvicorn, self.node)

    @property
    def _target(self) -> EngineTarget | None:
        return ENGINE_TARGETS.get(self.key)

    @property
    def target(self) -> str:
        """The target in words: a multiple of Node's figure, or an absolute one."""
        target = self._target
        if target is None:
            return ""
        if target.against is None:
            return f"{target.op} {target.value:g} {self.unit}"
        return f"{target.op} {target.value:g}x Node"

    def met(self, judged: bool = True) -> bool | None:
        """Whether the native engine meets its target; None when the row has none, nothing
        is judged (smoke), or a figure it needs is missing (no Node anchor in this run)."""
        target = self._target
        if target is None or not judged:
            return None
        measured = self.native if target.against is None else self.native_ratio
        if measured is None:
            return None
        return measured >= target.value if target.op == ">=" else measured <= target.value

    def verdict(self, judged: bool = True) -> str:
        target = self.target
        if not target:
            return ""
        if not judged:
            return f"{target} (smoke: not judged)"
        met = self.met(judged)
        if met is None:
            missing = "native" if self.native is None else "Node"
            return f"{target}: not judged (no {missing} figure)"
        return f"{target}: {'yes' if met else 'NO'}"


def engine_lines(
    engines: Mapping[str, Sequence[Row]], node: Sequence[Row], idle_steps: Sequence[int]
) -> list[EngineLine]:
    """The engines table: for every socket and memory figure measured on at least one engine,
    each engine's value (``Row.gateway`` of that engine's rows) and Node's (``Row.gateway`` of
    the Node anchor's rows, by ``node_key_for``)."""
    found = {engine: {r.key: r for r in engines.get(engine, ())} for engine in ENGINES}
    theirs = {r.key: r.gateway for r in node}
    lines: list[EngineLine] = []
    for key in (*SOCKET_KEYS, *memory_keys(idle_steps)):
        measured = {engine: found[engine][key] for engine in ENGINES if key in found[engine]}
        if not measured:
            continue
        first = next(iter(measured.values()))
        node_key = node_key_for(key)
        figure = first.figure if node_key == key else f"{first.figure} (Node: {node_key})"
        lines.append(
            EngineLine(
                figure=figure,
                key=key,
                unit=first.unit,
                native=measured["native"].gateway if "native" in measured else None,
                uvicorn=measured["uvicorn"].gateway if "uvicorn" in measured else None,
                node=theirs.get(node_key),
                node_key=node_key,
            )
        )
    return lines
