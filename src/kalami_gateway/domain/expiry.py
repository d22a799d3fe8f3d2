"""When each connection's token needs attention: a warning before it expires, a close when it
has. A heap of due times, so the ticker's work is what is due, not a look at every open
connection every second (with 5000 idle sockets that scan was ~9% of the gateway's busy
time, about 1% of a core; it grows with every socket held).

Entries are not removed one by one: a connection that went away, or refreshed its token, no
longer matches its old entries when they come due (the caller checks). So that churn (phones
reconnecting with hour-long tokens) cannot pile them up, the caller ``retain``s the live ones
whenever the queue holds far more than the open connections can need (amortised O(1)).
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Callable

import msgspec


class Due(enum.Enum):
    WARN = "warn"  # token_expiring
    EXPIRE = "expire"  # close 4003


class DueItem(msgspec.Struct, frozen=True):
    connection_id: str
    kind: Due
    expires_at: float  # the token's exp this entry was made for


class ExpiryQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, DueItem]] = []
        self._order = itertools.count()  # ties keep insertion order (and never compare items)

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, at: float, item: DueItem) -> None:
        heapq.heappush(self._heap, (at, next(self._order), item))

    def due(self, now: float) -> list[DueItem]:
        """Every entry due at ``now`` or before, in time order, taken off the queue."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            out.append(heapq.heappop(heap)[2])
        return out

    def retain(self, keep: Callable[[DueItem], bool]) -> None:
        """Drop every entry ``keep`` says no to."""
        self._heap = [entry for entry in self._heap if keep(entry[2])]
        heapq.heapify(self._heap)
