"""The shared keepalive timer: each callback at the first tick at or after its time, never
before; cancelled ones never; one loop timer armed at a time, none when nothing waits."""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
from collections.abc import Callable
from typing import Any, Final, cast

from hypothesis import given
from hypothesis import strategies as st

from kalami_gateway.adapters.server.heartbeats import _SLACK, SHORTEST, TICK, Beat, Heartbeats

# A tick's boundary is computed with a slack of _SLACK ticks (10 ns) against float error in
# ``k * TICK``: a beat due that little after a boundary may run at it (found by hypothesis:
# due 1001.0000000018507, ran 1001.0). Within it, "never early" holds.
EARLY: Final = _SLACK * TICK + 1e-12


class FakeTimer:
    def __init__(self, loop: FakeLoop, at: float, callback: Callable[[], object]) -> None:
        self.at = at
        self.callback = callback
        self._cancelled = False
        self._loop = loop

    def cancel(self) -> None:
        self._cancelled = True


class FakeLoop:
    """The four loop calls Heartbeats makes, on a clock the test moves."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._order = itertools.count()
        self.errors: list[dict[str, Any]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, at: float, callback: Callable[[], object]) -> FakeTimer:
        timer = FakeTimer(self, at, callback)
        heapq.heappush(self._timers, (at, next(self._order), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], object]) -> FakeTimer:
        return self.call_at(self.now + delay, callback)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        self.errors.append(context)

    def armed(self) -> int:
        return sum(1 for _, _, t in self._timers if not t._cancelled)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self._timers and self._timers[0][0] <= end:
            at, _, timer = heapq.heappop(self._timers)
            self.now = max(self.now, at)
            if not timer._cancelled:
                timer.callback()
        self.now = end


def wheel(loop: FakeLoop) -> Heartbeats:
    return Heartbeats(cast(asyncio.AbstractEventLoop, loop))


def test_a_callback_runs_at_the_first_tick_after_its_time_and_once() -> None:
    loop = FakeLoop()
    beats = wheel(loop)
    ran: list[float] = []
    beats.call_later(5.0, lambda: ran.append(loop.now))
    loop.advance(4.99)
    assert ran == []
    loop.advance(TICK + 0.02)
    assert len(ran) == 1
    assert 1005.0 <= ran[0] <= 1005.0 + TICK
    loop.advance(60)
    assert len(ran) == 1
    assert loop.armed() == 0  # nothing waits: no timer


def test_a_cancelled_callback_never_runs_and_others_do() -> None:
    loop = FakeLoop()
    beats = wheel(loop)
    ran: list[str] = []
    kept = beats.call_later(3.0, lambda: ran.append("kept"))
    dropped = beats.call_later(3.0, lambda: ran.append("dropped"))
    assert isinstance(kept, Beat)
    dropped.cancel()
    assert beats.waiting() == 1
    loop.advance(10)
    assert ran == ["kept"]
    assert beats.waiting() == 0


def test_a_beat_cancelled_by_an_earlier_one_of_its_tick_does_not_run() -> None:
    loop = FakeLoop()
    beats = wheel(loop)
    ran: list[str] = []
    later: list[Beat | asyncio.TimerHandle] = []

    def first() -> None:
        ran.append("first")
        later[0].cancel()

    beats.call_later(3.0, first)
    later.append(beats.call_later(3.0, lambda: ran.append("second")))
    loop.advance(4)
    assert ran == ["first"]
    assert beats.waiting() == 0


def test_cancelled_beats_leave_the_wheel_at_once() -> None:
    loop = FakeLoop()
    beats = wheel(loop)
    handles = [beats.call_later(30.0, lambda: None) for _ in range(500)]
    for handle in handles[:499]:
        handle.cancel()
    assert beats.waiting() == 1  # not 500 entries kept for 30 s
    handles[499].cancel()
    handles[499].cancel()  # twice is harmless
    assert beats.waiting() == 0


def test_short_delays_get_a_timer_of_their_own() -> None:
    loop = FakeLoop()
    beats = wheel(loop)
    ran: list[float] = []
    handle = beats.call_later(SHORTEST / 4, lambda: ran.append(loop.now))
    assert not isinstance(handle, Beat)
    loop.advance(SHORTEST / 4)
    assert ran == [1000.0 + SHORTEST / 4]  # exactly on time, not rounded to a tick


def test_one_loop_timer_for_many_connections() -> None:
    loop = FakeLoop()
    beats = wheel(loop)
    ran: list[int] = []
    for n in range(1000):
        beats.call_later(2.0 + n * 0.03, functools.partial(ran.append, n))
    assert loop.armed() == 1
    loop.advance(40)
    assert sorted(ran) == list(range(1000))
    assert loop.armed() == 0


def test_after_a_long_idle_nothing_is_caught_up_and_times_hold() -> None:
    loop = FakeLoop()
    beats = wheel(loop)
    beats.call_later(2.0, lambda: None)
    loop.advance(3600 * 24)  # a day with nothing waiting
    ran: list[float] = []
    beats.call_later(2.0, lambda: ran.append(loop.now))
    loop.advance(1.9)
    assert ran == []
    loop.advance(0.1 + TICK)
    assert len(ran) == 1


def test_a_failing_callback_is_reported_and_the_rest_still_run() -> None:
    loop = FakeLoop()
    beats = wheel(loop)
    ran: list[str] = []

    def boom() -> None:
        raise ValueError("boom")

    beats.call_later(2.0, boom)
    beats.call_later(2.0, lambda: ran.append("after"))
    loop.advance(3)
    assert ran == ["after"]
    assert [type(e["exception"]) for e in loop.errors] == [ValueError]


def test_a_callback_may_schedule_the_next_one() -> None:
    loop = FakeLoop()
    beats = wheel(loop)
    ran: list[float] = []

    def ping() -> None:
        ran.append(loop.now)
        beats.call_later(2.0, ping)
        assert loop.armed() <= 1  # rescheduling from a callback arms no second timer

    beats.call_later(2.0, ping)
    loop.advance(20.1)
    assert len(ran) >= 8
    gaps = [b - a for a, b in itertools.pairwise(ran)]
    assert all(2.0 - EARLY <= g <= 2.0 + TICK + 1e-9 for g in gaps)


@given(
    st.lists(
        st.tuples(st.floats(SHORTEST, 30.0), st.booleans(), st.floats(0.0, 10.0)),
        min_size=1,
        max_size=60,
    )
)
def test_never_early_never_more_than_a_tick_late_cancelled_never(
    plan: list[tuple[float, bool, float]],
) -> None:
    loop = FakeLoop()
    beats = wheel(loop)
    ran: dict[int, float] = {}
    due: dict[int, float] = {}
    cancelled: set[int] = set()

    def record(n: int) -> None:
        ran.setdefault(n, loop.now)

    for n, (delay, cancel, wait) in enumerate(plan):
        due[n] = loop.now + delay
        handle = beats.call_later(delay, functools.partial(record, n))
        if cancel:
            handle.cancel()
            cancelled.add(n)
        loop.advance(wait)
    loop.advance(60)
    assert set(ran) == set(due) - cancelled
    for n, at in ran.items():
        assert due[n] - EARLY <= at <= due[n] + TICK + 1e-9
    assert loop.armed() == 0


def test_the_wheel_is_per_loop() -> None:
    from kalami_gateway.adapters.server.heartbeats import for_loop

    one, two = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert for_loop(one) is for_loop(one)
        assert for_loop(one) is not for_loop(two)
    finally:
        one.close()
        two.close()
