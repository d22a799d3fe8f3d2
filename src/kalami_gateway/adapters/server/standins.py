"""Light stand-ins for the asyncio primitives uvicorn's WebSocket protocol makes per
connection, doing only what it asks of them (``LivelyWebSocketProtocol.__init__`` swaps them
in): ~3 KB of an idle connection's ~23 KB (bench/README.md, "What one idle connection
costs"). What uvicorn calls on them is checked against its source by
tests/unit/adapters/server/test_third_party_internals.py."""

from __future__ import annotations

import asyncio
import collections
from typing import Any


class ReceiveQueue:
    """What uvicorn's protocol asks of its receive queue (``put_nowait``, ``get``, ``empty``),
    light enough for a connection that mostly waits: an ``asyncio.Queue`` allocates three
    deques of ~760 B each up front, per connection, even empty (bench/README.md, "What one
    idle connection costs"). Here the deque exists only while messages wait. An item is
    always stored before the waiter is woken, so a cancelled ``get`` loses nothing."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: collections.deque[Any] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    def empty(self) -> bool:
        return not self._items


class WritableFlag:
    """uvicorn's ``writable`` event (``set``, ``clear``, ``wait``) without the ~760 B deque an
    ``asyncio.Event`` allocates up front: a waiter list only while a send waits for the
    socket to drain."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        wake_all(waiters)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        while not self._set:
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            await waiter


def wake_all(waiters: list[asyncio.Future[None]] | None) -> None:
    """Wake the sends that wait for the socket to drain: ``WritableFlag``'s, and the native
    engine's (``NativeWebSocketProtocol.resume_writing``, which keeps its own list)."""
    for waiter in waiters or ():
        if not waiter.done():
            waiter.set_result(None)
