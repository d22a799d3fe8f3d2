"""The scale report's arithmetic: percentiles, the spread over workers, ping lateness."""

from __future__ import annotations

import math

import pytest
from bench.scale.figures import (
    lateness,
    merge_spreads,
    percentile,
    shares,
    spread_of,
    spread_percent,
)


def test_percentile_by_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0, 1.0, 2.0], 0) == 1
    assert math.isnan(percentile([], 99))


def test_spread_is_the_busiest_worker_over_the_mean() -> None:
    assert spread_percent([100, 100, 100]) == 0
    assert spread_percent([90, 100, 110]) == pytest.approx(10)
    assert spread_percent([0, 0, 300]) == pytest.approx(200)
    assert spread_percent([]) == 0
    assert spread_percent([0, 0]) == 0


def test_lateness_is_each_gap_past_the_interval() -> None:
    found = lateness([15.0, 15.002, 15.5, 17.0], interval=15.0, tolerance=1.0)
    assert found.gaps == 4
    assert found.p50_ms == pytest.approx(2)
    assert found.max_ms == pytest.approx(2000)
    assert found.late == 1  # only the 2 s one is past the 1 s tolerance


def test_no_gaps_no_lateness() -> None:
    found = lateness([], interval=15.0, tolerance=1.0)
    assert found.gaps == 0
    assert found.late == 0
    assert math.isnan(found.p99_ms)


def test_pings_per_connection_merged_over_processes() -> None:
    one = spread_of([2, 2, 3])
    two = spread_of([4])
    assert (one.low, one.high) == (2, 3)
    assert one.mean == pytest.approx(7 / 3)
    merged = merge_spreads([(one, 3), (two, 1)])
    assert merged.low == 2
    assert merged.high == 4
    assert merged.mean == pytest.approx(11 / 4)
    assert math.isnan(merge_spreads([(spread_of([]), 0)]).mean)


def test_shares_add_up_and_differ_by_one_at_most() -> None:
    parts = shares(100_001, 6)
    assert sum(parts) == 100_001
    assert max(parts) - min(parts) == 1
    assert shares(5, 1) == [5]
