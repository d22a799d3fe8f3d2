"""The batcher: concurrent submissions share calls, results go back in order, failures reach
exactly the waiters of the failed batch."""

from __future__ import annotations

import asyncio

import pytest

from kalami_gateway.adapters.redis.batcher import Batcher


class Recorder:
    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on

    async def __call__(self, batch: list[int]) -> list[int]:
        self.batches.append(batch)
        await asyncio.sleep(0)  # on the wire
        if self.fail_on is not None and self.fail_on in batch:
            raise ConnectionError("store away")
        return [n * 10 for n in batch]


async def test_one_item_alone_is_one_call() -> None:
    calls = Recorder()
    assert await Batcher(calls).submit(4) == 40
    assert calls.batches == [[4]]


async def test_items_arriving_while_a_call_is_on_the_wire_go_together_in_the_next() -> None:
    calls = Recorder()
    batcher = Batcher(calls)
    results = await asyncio.gather(*(batcher.submit(n) for n in range(10)))
    assert results == [n * 10 for n in range(10)]
    assert calls.batches == [list(range(10))]  # all submitted before the call went out
    for n in range(3):  # one after the other: a call each
        assert await batcher.submit(n) == n * 10
    assert calls.batches[1:] == [[0], [1], [2]]


async def test_items_submitted_during_a_call_wait_for_the_next_one() -> None:
    calls = Recorder()
    batcher = Batcher(calls)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)  # the call for [1] is on the wire
    rest = [asyncio.create_task(batcher.submit(n)) for n in (2, 3)]
    assert await asyncio.gather(first, *rest) == [10, 20, 30]
    assert calls.batches == [[1], [2, 3]]


async def test_a_failed_batch_fails_its_waiters_only_and_the_next_batch_still_goes() -> None:
    calls = Recorder(fail_on=0)
    batcher = Batcher(calls)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0)  # [0] is on the wire alone
    rest = [asyncio.create_task(batcher.submit(n)) for n in range(1, 5)]
    outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
    assert isinstance(outcomes[0], ConnectionError)
    assert outcomes[1:] == [10, 20, 30, 40]
    assert calls.batches == [[0], [1, 2, 3, 4]]


async def test_a_cancelled_drain_cancels_its_waiters() -> None:
    release = asyncio.Event()

    async def stuck(batch: list[int]) -> list[int]:
        await release.wait()
        return batch

    batcher = Batcher(stuck)
    waiters = [asyncio.create_task(batcher.submit(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert batcher._task is not None
    batcher._task.cancel()
    for waiter in waiters:
        with pytest.raises(asyncio.CancelledError):
            await waiter


async def test_a_drain_cancelled_before_it_ran_cancels_the_queue() -> None:
    batcher = Batcher(Recorder())
    waiter = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)  # submitted; the drain task exists but has not run
    assert batcher._task is not None
    batcher._task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await batcher.submit(2) == 20  # and the batcher still works
