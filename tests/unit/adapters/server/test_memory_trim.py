"""The trim after a mass close: made once the open connections have been at half their peak
(a peak of at least the floor) on two checks in a row, the peak counted again from there;
logged with what it gave back and how long it took; nothing where the C library has no
``malloc_trim``."""

from __future__ import annotations

import logging

import pytest

from kalami_gateway.adapters.server.memory_trim import (
    TRIM_CHECK_SECONDS,
    TRIM_FLOOR,
    TrimWatch,
    glibc_malloc_trim,
    resident_bytes,
    trim_after_mass_close,
)


class ScriptDone(Exception):
    """The test's script of connection counts has run out: the loop is stopped."""


class World:
    """Connection counts read one per check, a clock a trim moves, a trim that records."""

    def __init__(self, counts: list[int], trim_seconds: float = 0.0123) -> None:
        self.counts = list(counts)
        self.slept: list[float] = []
        self.now = 100.0
        self.trims: list[int] = []  # the count each trim was made at
        self.trim_seconds = trim_seconds
        self.resident = 300 << 20
        self._current = 0

    async def sleep(self, seconds: float) -> None:
        if not self.counts:
            raise ScriptDone
        self.slept.append(seconds)
        self._current = self.counts.pop(0)

    def open_connections(self) -> int:
        return self._current

    def clock(self) -> float:
        return self.now

    def trim(self) -> int:
        self.trims.append(self._current)
        self.now += self.trim_seconds
        self.resident -= 50 << 20
        return 1

    def resident_bytes(self) -> int:
        return self.resident

    async def run(self, floor: int = TRIM_FLOOR) -> None:
        with pytest.raises(ScriptDone):
            await trim_after_mass_close(
                self.open_connections,
                find_trim=lambda: self.trim,
                sleep=self.sleep,
                clock=self.clock,
                resident=self.resident_bytes,
                floor=floor,
            )


def trimmed_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.message == "memory_trimmed"]


async def test_no_trim_while_the_connections_stay_above_half_their_peak() -> None:
    world = World([500, 1000, 2000, 1500, 1001, 1800, 1200])
    await world.run()
    assert world.trims == []
    assert world.slept == [TRIM_CHECK_SECONDS] * 7


async def test_a_fall_to_half_the_peak_trims_at_the_next_check_and_logs_what_it_gave_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    world = World([2000, 4000, 2000, 1800, 1700, 1600])
    await world.run()
    # At half the peak on two checks (2000, then 1800): the second trims. Then the peak
    # is 1800, which 1700 and 1600 are not half of.
    assert world.trims == [1800]
    (record,) = trimmed_records(caplog)
    assert record.levelno == logging.INFO
    assert record.__dict__["connections"] == 1800
    assert record.__dict__["peak"] == 4000
    assert record.__dict__["rss_before"] == 300 << 20
    assert record.__dict__["rss_after"] == 250 << 20
    assert record.__dict__["took_ms"] == 12.3


async def test_one_check_at_half_the_peak_is_not_enough() -> None:
    # 1000 is half of 2000, but the next check is back above it: no trim.
    world = World([2000, 1000, 1500, 1000, 1100])
    await world.run()
    assert world.trims == []


async def test_the_peak_starts_again_from_each_trim() -> None:
    # Trimmed at 1000 (peak 2000, at half since 1000); then 1000 is the peak: 600 is not
    # half of it, 500 and 400 are; after 400 the peak is 400: under the floor.
    world = World([2000, 1000, 1000, 600, 500, 400, 200, 100])
    await world.run()
    assert world.trims == [1000, 400]


async def test_a_peak_under_the_floor_never_trims() -> None:
    world = World([999, 0, 0, 999, 0, 0])
    await world.run()
    assert world.trims == []
    world = World([100, 40, 10])
    await world.run(floor=100)
    assert world.trims == [10]  # the floor is the caller's


async def test_a_burst_between_checks_is_not_seen() -> None:
    # The peak is what the checks saw: a count is cheap, but only read every few seconds.
    world = World([1000, 600, 400, 300])
    await world.run()
    assert world.trims == [300]


async def test_without_a_malloc_trim_it_stops_at_the_first_due_trim() -> None:
    world = World([2000, 1000, 900, 2000, 1000])
    with_none: list[int] = []

    def find_nothing() -> None:
        with_none.append(1)

    await trim_after_mass_close(
        world.open_connections,
        find_trim=find_nothing,
        sleep=world.sleep,
        clock=world.clock,
        resident=world.resident_bytes,
    )  # returned instead of running on
    assert with_none == [1]
    assert world.counts == [2000, 1000]  # it checked no further
    assert world.trims == []


def test_the_watch_says_due_at_half_the_peak_or_less_twice_in_a_row() -> None:
    watch = TrimWatch(floor=10)
    assert [watch.due(n) for n in (4, 10, 6, 5, 0)] == [False, False, False, False, True]
    watch.trimmed(0)
    assert watch.peak == 0
    assert [watch.due(n) for n in (0, 0)] == [False, False]  # nothing to fall from


def test_glibcs_trim_is_found_and_runs_here() -> None:
    trim = glibc_malloc_trim()  # the test machines run glibc
    assert trim is not None
    assert trim() in (0, 1)  # 1: it gave memory back


def test_the_resident_memory_is_read_from_the_kernel() -> None:
    resident = resident_bytes()
    assert resident is not None
    with open("/proc/self/status", encoding="ascii") as status:
        vm_rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    assert abs(resident - vm_rss_kib * 1024) < 64 << 20  # the same figure, read twice
