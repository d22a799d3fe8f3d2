"""Push delivery within one process (no Redis): published straight to this instance."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from kalami_gateway.domain.ports import ConnectionDirectory, PushBus

Deliver = Callable[[str, bytes], Awaitable[None]]


class LocalPushBus(PushBus):
    def __init__(self, directory: ConnectionDirectory) -> None:
        self._directory = directory
        self._deliver: Deliver | None = None

    async def publish(self, user_id: str, payload: bytes) -> int:
        count = len(await self._directory.connections_of(user_id))
        if self._deliver is not None:
            await self._deliver(user_id, payload)
        return count

    async def run(self, deliver: Deliver) -> None:
        self._deliver = deliver
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            self._deliver = None
