"""``sleep`` on a FakeClock, for the service's timers (the remote turn's watchdog, the takeover
poll, the drain's wait for turns): a sleeper wakes when ``advance`` moves the clock to its
time, never by the real clock."""

from __future__ import annotations

import asyncio
import heapq
import itertools

from tests.unit.fakes import FakeClock


class ClockSleep:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.asked: list[float] = []  # every sleep asked for, in order
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._someone_asleep = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)  # a yield, as asyncio.sleep(0) is
            return
        wake = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.clock.monotonic() + seconds, next(self._order), wake))
        self._someone_asleep.set()
        await wake

    async def someone_asleep(self) -> None:
        """Returns once a sleeper is waiting (at once if one is): no real time passes."""
        await self._someone_asleep.wait()

    def advance(self, seconds: float) -> None:
        """Move the clock on; the sleepers whose time has come wake."""
        self.clock.advance(seconds)
        now = self.clock.monotonic()
        while self._sleepers and self._sleepers[0][0] <= now:
            wake = heapq.heappop(self._sleepers)[2]
            if not wake.done():  # a cancelled sleeper's future is done
                wake.set_result(None)
        if all(wake.done() for _, _, wake in self._sleepers):
            self._someone_asleep.clear()
