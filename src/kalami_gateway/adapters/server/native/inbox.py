"""What a native connection holds for its app until the app's next ``receive()``: messages
(``str``, ``bytes``) and the ASGI events of the connection's start and end (dicts), in order.

One message waits in a slot of its own; a deque exists only while more than one waits (a
read holding several frames). The app's ``receive`` waits on a future made only when
nothing is there."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

Item = str | bytes | dict[str, Any]


class Inbox:
    __slots__ = ("_first", "_more", "_waiter")

    def __init__(self) -> None:
        self._first: Item | None = None
        self._more: collections.deque[Item] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: Item) -> None:
        if self._first is None:
            self._first = item
        else:
            if self._more is None:
                self._more = collections.deque()
            self._more.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return self._first is None

    async def get(self, loop: asyncio.AbstractEventLoop) -> Item:
        """The next item; waits while there is none. An item is always stored before the
        waiter is woken, so a cancelled ``get`` loses nothing."""
        while self._first is None:
            waiter = self._waiter = loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        item = self._first
        more = self._more
        if more:
            self._first = more.popleft()
            if not more:
                self._more = None
        else:
            self._first = None
        return item
