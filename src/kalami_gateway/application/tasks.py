"""The application's own tasks and timers: work sent off in the background, and the waits.

Every wait goes through an injected ``Sleep`` (``asyncio.sleep`` in production, a fake clock's
in the unit tests), never ``asyncio.sleep`` called directly, so no test waits on the real
clock. Backend deadlines are not sleeps: they are ``asyncio.timeout``s (``backend_calls``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from typing import Any

Sleep = Callable[[float], Awaitable[None]]


class Background:
    """Work that runs on its own (a push, a close frame): each task is held until it is done,
    since the event loop keeps only a weak reference to it."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[None]] = set()

    def spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def wait_within(tasks: Collection[asyncio.Future[Any]], seconds: float, sleep: Sleep) -> None:
    """Wait until every one of ``tasks`` is done, or ``seconds`` have passed by ``sleep``,
    whichever comes first. The tasks are left as they are (done or still running)."""
    everything = asyncio.ensure_future(asyncio.wait(tasks))
    timer = asyncio.ensure_future(sleep(seconds))
    try:
        await asyncio.wait((everything, timer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        everything.cancel()  # stops the waiting only: asyncio.wait cancels none of the tasks
        timer.cancel()
