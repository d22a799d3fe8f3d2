"""``Row``: one figure of the table — the gateway's value, the Node stack's, the empty app's
and nginx's beside it when measured, the ratios, and the verdicts against the thresholds."""

from __future__ import annotations

from dataclasses import dataclass

from bench.report.thresholds import NODE_TARGETS, TARGETS


def _ratio(value: float | None, baseline: float | None) -> float | None:
    return None if value is None or not baseline else value / baseline


@dataclass
class Row:
    figure: str
    key: str
    gateway: float
    nginx: float | None = None
    unit: str = ""
    node: float | None = None
    floor: float | None = None  # the empty app on the gateway's server (bench/floor.py)

    @property
    def floor_ratio(self) -> float | None:
        """The empty app against Node: how far the server stack alone gets."""
        return _ratio(self.floor, self.node)

    @property
    def node_ratio(self) -> float | None:
        return _ratio(self.gateway, self.node)

    def node_verdict(self, judged: bool = True) -> str:
        target = NODE_TARGETS.get(self.key)
        ratio = self.node_ratio
        if target is None or ratio is None:
            return ""
        op, value = target
        if not judged:
            return f"{op} {value:g}x (smoke: not judged)"
        met = ratio >= value if op == ">=" else ratio <= value
        return f"{op} {value:g}x: {'yes' if met else 'NO'}"

    @property
    def ratio(self) -> float | None:
        return _ratio(self.gateway, self.nginx)

    def verdict(self, judged: bool = True) -> str:
        target = TARGETS.get(self.key)
        if target is None:
            return ""
        op, value = target
        if not judged:
            return f"{op} {value:g} (smoke: not judged)"
        met = self.gateway >= value if op == ">=" else self.gateway <= value
        return f"{op} {value:g}: {'yes' if met else 'NO'}"


def with_node(rows: list[Row], node_rows: list[Row]) -> list[Row]:
    """``rows`` with the Node anchor's figure of the same key beside the gateway's."""
    theirs = {r.key: r.gateway for r in node_rows}
    for row in rows:
        if row.key in theirs:
            row.node = theirs[row.key]
    return rows


def with_floor(rows: list[Row], floor_rows: list[Row]) -> list[Row]:
    """``rows`` with the empty app's figure of the same key beside the gateway's."""
    theirs = {r.key: r.gateway for r in floor_rows}
    for row in rows:
        if row.key in theirs:
            row.floor = theirs[row.key]
    return rows
