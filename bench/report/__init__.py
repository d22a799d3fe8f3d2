"""The report: ``Row`` (one figure, its ratios and its verdicts), the thresholds it is judged
against (``TARGETS``, ``NODE_TARGETS``), the two markdown tables a run prints (``table``,
``floor_table``) and the JSON it writes (``write_results``)."""

from bench.report.results import default_path, write_results
from bench.report.row import Row, with_floor, with_node
from bench.report.tables import FLOOR_KEYS, FLOOR_KINDS, FLOOR_NAMES, floor_table, table
from bench.report.thresholds import NODE_TARGETS, TARGETS

__all__ = [
    "FLOOR_KEYS",
    "FLOOR_KINDS",
    "FLOOR_NAMES",
    "NODE_TARGETS",
    "TARGETS",
    "Row",
    "default_path",
    "floor_table",
    "table",
    "with_floor",
    "with_node",
    "write_results",
]
