"""The arithmetic of the scale report (pure): percentiles, the spread of connections over the
workers, and what the pings' gaps say about lateness."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by the nearest-rank method; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def spread_percent(per_worker: Sequence[int]) -> float:
    """How far the busiest worker is above the mean, in % of the mean (0: perfectly even)."""
    if not per_worker or sum(per_worker) == 0:
        return 0.0
    mean = sum(per_worker) / len(per_worker)
    return (max(per_worker) / mean - 1) * 100


@dataclass(frozen=True)
class Lateness:
    """The gaps between consecutive protocol pings on one connection (or from its upgrade to
    its first ping), against the heartbeat interval: positive is late."""

    gaps: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    late: int  # gaps longer than the interval by more than the tolerance


def lateness(gaps: Sequence[float], interval: float, tolerance: float) -> Lateness:
    over = [(gap - interval) * 1000 for gap in gaps]
    return Lateness(
        gaps=len(over),
        p50_ms=percentile(over, 50),
        p99_ms=percentile(over, 99),
        max_ms=max(over, default=math.nan),
        late=sum(1 for ms in over if ms > tolerance * 1000),
    )


@dataclass(frozen=True)
class Spread:
    """Pings per connection during the hold: fewest, mean, most."""

    low: int
    mean: float
    high: int


def spread_of(counts: Sequence[int]) -> Spread:
    if not counts:
        return Spread(0, math.nan, 0)
    return Spread(min(counts), sum(counts) / len(counts), max(counts))


def merge_spreads(parts: Sequence[tuple[Spread, int]]) -> Spread:
    """Several processes' spreads (each with its number of connections) as one."""
    weighted = [(s, n) for s, n in parts if n]
    if not weighted:
        return Spread(0, math.nan, 0)
    total = sum(n for _, n in weighted)
    return Spread(
        min(s.low for s, _ in weighted),
        sum(s.mean * n for s, n in weighted) / total,
        max(s.high for s, _ in weighted),
    )


def shares(total: int, parts: int) -> list[int]:
    """``total`` connections over ``parts`` processes, as evenly as possible."""
    return [total // parts + (1 if n < total % parts else 0) for n in range(parts)]
