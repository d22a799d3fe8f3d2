"""The frame budget's arithmetic: a read parsed at once never holds more frames than the
budget has left, the budget refills up to its burst and no further, and a throttled
connection is read again only once at least one frame's worth has come back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kalami_gateway.adapters.server.frame_budget import (
    BURST_SECONDS,
    MIN_FRAME,
    PIECE,
    WAKE_SECONDS,
    refilled,
    room,
    throttle_wait,
)

credits = st.floats(min_value=-1000, max_value=100_000, allow_nan=False)
rates = st.floats(min_value=0.5, max_value=100_000, allow_nan=False)


@given(credits)
def test_the_room_never_holds_more_frames_than_the_budget_has_left(credit: float) -> None:
    bytes_ = room(credit)
    assert 0 <= bytes_ <= PIECE
    assert bytes_ // MIN_FRAME <= max(0, int(credit))


def test_a_budget_with_frames_left_has_room_for_them() -> None:
    assert room(3) == 3 * MIN_FRAME
    assert room(0.5) == 0
    assert room(10**6) == PIECE


def test_the_budget_refills_at_its_rate_up_to_its_burst() -> None:
    assert refilled(0.0, 10.0, 10.5, 100.0) == 50.0  # half a second at 100 frames a second
    assert refilled(-30.0, 10.0, 10.5, 100.0) == 20.0  # frames over the budget are paid first
    assert refilled(150.0, 10.0, 11.0, 100.0) == 100.0 * BURST_SECONDS  # no more than a burst


@given(credits, rates, st.floats(min_value=0, max_value=1000, allow_nan=False))
def test_the_budget_never_shrinks_nor_passes_its_burst(
    credit: float, rate: float, elapsed: float
) -> None:
    level = refilled(credit, 100.0, 100.0 + elapsed, rate)
    assert min(credit, rate * BURST_SECONDS) <= level <= rate * BURST_SECONDS


@given(st.floats(min_value=-1000, max_value=0.999, allow_nan=False), rates)
def test_a_throttled_connection_waits_for_at_least_one_frame(credit: float, rate: float) -> None:
    wait = throttle_wait(rate, credit)
    assert wait > 0
    back = refilled(credit, 0.0, wait, rate)
    # One frame at least, or WAKE_SECONDS' worth if more (float error aside).
    wanted = max(1.0, rate * WAKE_SECONDS)
    assert back >= wanted * (1 - 1e-9)
