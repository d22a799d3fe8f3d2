"""Every idle connection's next keepalive ping on one timer per event loop.

uvicorn arms a loop timer per connection for its next ping: a ``TimerHandle``, its bound
callback and libuv's timer, ~600 B of an idle connection's heap for the whole interval
(bench/README.md, "What one idle connection costs"), and a heap insertion in the loop's
timer queue every interval. Here a ping is due at the first tick (``TICK`` seconds) at or
after its time; one timer runs each tick's callbacks while any are waiting. A ping may so
go out up to one tick late, never early (beyond 10 ns of float slack); delays shorter than
``SHORTEST`` keep a timer of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import weakref
from collections.abc import Callable
from typing import Final

# Short, so that a tick's pings are few (connections opened at 2,000/s: ~20 per tick, ~2 ms
# of writes) and the loop is never held for long; a tick with nothing due costs ~5 µs.
TICK: Final = 0.01
SHORTEST: Final = 1.0


class Beat:
    """One waiting callback; ``cancel`` is all a holder may do (as with a TimerHandle). A
    cancelled beat leaves its tick's list at once (a closed connection's entry would
    otherwise wait there for up to an interval); a tick's list is short (10 ms of
    connections), so that is cheap."""

    __slots__ = ("_bucket", "_callback")

    def __init__(self, callback: Callable[[], object], bucket: list[Beat]) -> None:
        self._callback: Callable[[], object] | None = callback
        self._bucket: list[Beat] | None = bucket

    def cancel(self) -> None:
        self._callback = None
        bucket, self._bucket = self._bucket, None
        if bucket is not None:
            with contextlib.suppress(ValueError):  # its tick is running: already taken out
                bucket.remove(self)

    def _run(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


class Heartbeats:
    """The callbacks due per tick, for one event loop (``for_loop``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: dict[int, list[Beat]] = {}
        self._done = _current_tick(loop.time())  # every tick up to this one has run
        self._timer: asyncio.TimerHandle | None = None

    def call_later(
        self, delay: float, callback: Callable[[], object]
    ) -> Beat | asyncio.TimerHandle:
        if delay < SHORTEST:
            return self._loop.call_later(delay, callback)
        now = self._loop.time()
        if self._timer is None and not self._due:  # idle until now: nothing to catch up on
            self._done = max(self._done, _current_tick(now))
        tick = max(_first_tick_after(now + delay), self._done + 1)
        bucket = self._due.setdefault(tick, [])
        beat = Beat(callback, bucket)
        bucket.append(beat)
        if self._timer is None:
            self._arm()
        return beat

    def waiting(self) -> int:
        """Callbacks not yet run or cancelled."""
        return sum(len(beats) for beats in self._due.values())

    def _arm(self) -> None:
        self._timer = self._loop.call_at((self._done + 1) * TICK, self._tick)

    def _tick(self) -> None:
        self._timer = None
        # The timer was armed for the next tick: that one at least is due (the loop may fire
        # a timer a hair before its time).
        now = max(_current_tick(self._loop.time()), self._done + 1)
        while self._done < now:
            self._done += 1
            bucket = self._due.pop(self._done, [])
            for beat in bucket:
                beat._bucket = None  # taken out: a cancel now only drops the callback
            for beat in bucket:
                try:
                    beat._run()
                except Exception as exc:  # as the loop treats a callback's error
                    self._loop.call_exception_handler(
                        {"message": "keepalive callback failed", "exception": exc}
                    )
        if self._due and self._timer is None:  # a callback may have armed it already
            self._arm()


# Tick k starts at k * TICK; the slack absorbs float error in that product (1e-8 s).
_SLACK: Final = 1e-6


def _current_tick(at: float) -> int:
    return math.floor(at / TICK + _SLACK)


def _first_tick_after(at: float) -> int:
    """The first tick starting at or after ``at``."""
    return math.ceil(at / TICK - _SLACK)


_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Heartbeats] = (
    weakref.WeakKeyDictionary()
)


def for_loop(loop: asyncio.AbstractEventLoop) -> Heartbeats:
    beats = _per_loop.get(loop)
    if beats is None:
        beats = _per_loop[loop] = Heartbeats(loop)
    return beats


def next_ping(
    loop: asyncio.AbstractEventLoop,
    interval: float,
    last_rtt: float,
    ping: Callable[[], object],
) -> Beat | asyncio.TimerHandle:
    """A connection's next keepalive ping on ``loop``'s shared timer (either engine): due
    ``interval`` after the last one was sent, whose round trip (``last_rtt``) has passed
    since, as uvicorn times it."""
    return for_loop(loop).call_later(max(0.0, interval - last_rtt), ping)
