"""Coalescing concurrent calls into batches: one call in flight, the rest wait for the next.

Under load, every item submitted while a batch is on the wire goes out together in the next
one, so the per-call overhead (for Redis: ~50 to 80 µs of client CPU per script call) is paid
once per batch; with no load a batch is one item and nothing waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

MAX_BATCH: Final = 256


class Batcher(Generic[Item, Result]):
    """``submit(item)`` resolves with ``call(batch)``'s result for that item (same order), or
    raises what the call raised."""

    def __init__(self, call: Callable[[list[Item]], Awaitable[list[Result]]]) -> None:
        self._call = call
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._task: asyncio.Task[None] | None = None  # kept: a task nobody holds can vanish

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())
            self._task.add_done_callback(self._drained)
        return await future

    def _drained(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            return
        # Cancelled (perhaps before it ever ran): nobody will serve the queue.
        if self._task is task:
            self._task = None
        for _, future in self._queue:
            future.cancel()
        self._queue = []

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    results = await self._call([item for item, _ in batch])
                except Exception as exc:  # every waiter of the batch gets it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:  # cancelled: so are this batch's waiters
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            # Synchronously with the loop's end: a submit after this starts a new drain.
            self._task = None
