"""The drain at shutdown: refuse new connections and close every open one.

With resumable sessions on Redis (a restart): 1012, sessions parked for another instance,
turns in flight given ``shutdown_turn_wait`` to finish and park their replies. Otherwise:
1001 and every session ended. Then a last attempt at every end call still being retried.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final

from kalami_gateway.application.cleanup import SessionCleanup
from kalami_gateway.application.connections import Connection, Connections
from kalami_gateway.application.limits import ServiceLimits
from kalami_gateway.application.parked import ParkedSessions
from kalami_gateway.application.resume import TURN_LOST
from kalami_gateway.application.tasks import Sleep, wait_within
from kalami_gateway.domain.auth import CloseCode

SHUTDOWN_REASON: Final = "Server shutting down"
RESTART_REASON: Final = "Service restart"


class Drain:
    def __init__(
        self,
        connections: Connections,
        parked: ParkedSessions,
        cleanup: SessionCleanup,
        limits: ServiceLimits,
        sleep: Sleep,
        disconnect: Callable[[Connection, str], Awaitable[None]],
    ) -> None:
        self.draining = False
        # Whether a shutdown parks sessions for another instance (Redis and a grace).
        self.restarts = parked.store is not None and limits.restart_parks
        self._turn_wait = limits.drain_turn_wait(self.restarts)
        self._connections = connections
        self._parked = parked
        self._cleanup = cleanup
        self._sleep = sleep
        self._disconnect = disconnect

    def close_frame(self) -> tuple[CloseCode, str]:
        """What a connection closed by the drain (or refused during it) is told."""
        if self.restarts:
            return CloseCode.SERVICE_RESTART, RESTART_REASON
        return CloseCode.GOING_AWAY, SHUTDOWN_REASON

    async def drain(self) -> None:
        self.draining = True
        await asyncio.gather(*(self._shut(conn) for conn in self._connections.every_open()))
        await self._finish_detached_turns()
        await self._parked.leave()  # sessions nobody can resume once we are gone
        await self._cleanup.close()

    async def _shut(self, conn: Connection) -> None:
        code, reason = self.close_frame()
        if self.restarts:
            # Parked before the client hears 1012, so its resume (anywhere) finds the session.
            await self._disconnect(conn, "server_restart")
            await conn.channel.close(code, reason)
            return
        await conn.channel.close(code, reason)
        await self._disconnect(conn, "server_shutdown")

    async def _finish_detached_turns(self) -> None:
        """Let turns of parked sessions finish within the drain's turn wait; the rest are
        cancelled and their clients told, when they resume, that the reply was lost."""
        turns = {c.turn: c for c in self._connections.turns_running_on() if c.turn is not None}
        if turns and self._turn_wait > 0:
            await wait_within(list(turns), self._turn_wait, self._sleep)
        for turn, conn in turns.items():
            if turn.done():
                continue
            turn.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await turn
            if self.restarts:
                await self._parked.keep_outcome(conn, TURN_LOST)
