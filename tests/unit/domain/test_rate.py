"""The token bucket behind per-connection rate limits (a fake clock: plain numbers)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kalami_gateway.domain.rate import TokenBucket, bucket


def test_a_burst_of_two_seconds_passes_then_the_rate_holds() -> None:
    b = TokenBucket(rate=50, now=0.0)
    assert all(b.take(1, 0.0) == 0 for _ in range(100))  # 2 s worth at once
    assert b.take(1, 0.0) == pytest.approx(1 / 50)  # the next waits one token's time
    assert b.take(1, 0.0) == pytest.approx(2 / 50)
    assert b.take(1, 1.0) == 0  # refilled meanwhile (47 tokens back, 3 owed)


def test_bytes_are_tokens_too() -> None:
    b = TokenBucket(rate=1_000_000, now=0.0)
    assert b.take(2_000_000, 0.0) == 0
    assert b.take(500_000, 0.0) == pytest.approx(0.5)


def test_zero_means_no_limit() -> None:
    assert bucket(0, 0.0) is None
    assert isinstance(bucket(10, 0.0), TokenBucket)
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0, 0.0)


@settings(max_examples=50)
@given(st.lists(st.floats(0, 0.5), min_size=1, max_size=200))
def test_a_reader_that_waits_as_told_never_exceeds_rate_plus_burst(gaps: list[float]) -> None:
    rate, now = 20.0, 0.0
    b = TokenBucket(rate, now)
    for taken, gap in enumerate(gaps, start=1):
        now += gap
        now += b.take(1, now)  # the adapter waits this long before the next read
        assert taken <= rate * now + 2 * rate + 1e-6


def test_try_take_refuses_without_going_into_debt() -> None:
    b = TokenBucket(rate=1.0, now=0.0, burst_seconds=2)
    assert b.try_take(1, 0.0)
    assert b.try_take(1, 0.0)
    assert not b.try_take(1, 0.0)
    assert not b.try_take(1, 0.5)  # refusals cost nothing: half a token by now
    assert b.try_take(1, 1.0)
    assert not b.full(1.0)
    assert b.full(3.0)
