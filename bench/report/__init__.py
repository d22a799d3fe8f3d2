"""The report: ``Row`` (one figure, its ratios and its verdicts), the thresholds it is judged
against (``TARGETS``, ``NODE_TARGETS``, ``ENGINE_TARGETS``), ``EngineLine`` (one WebSocket
figure on both engines, issue 27), the three markdown tables a run prints (``table``,
``floor_table``, ``engines_table``) and the JSON it writes (``write_results``)."""

from bench.report.engines import ENGINES, EngineLine, engine_lines
from bench.report.results import default_path, write_results
from bench.report.row import Row, with_floor, with_node
from bench.report.tables import (
    FLOOR_KEYS,
    FLOOR_KINDS,
    FLOOR_NAMES,
    engines_table,
    floor_table,
    table,
)
from bench.report.thresholds import ENGINE_TARGETS, NODE_TARGETS, TARGETS

__all__ = [
    "ENGINES",
    "ENGINE_TARGETS",
    "FLOOR_KEYS",
    "FLOOR_KINDS",
    "FLOOR_NAMES",
    "NODE_TARGETS",
    "TARGETS",
    "EngineLine",
    "Row",
    "default_path",
    "engine_lines",
    "engines_table",
    "floor_table",
    "table",
    "with_floor",
    "with_node",
    "write_results",
]
