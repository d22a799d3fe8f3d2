"""Token expiry: ``token_expiring`` before a connection's token expires, 4003 once it has
(after the reply of a turn in flight), and ``refresh`` to carry on with a new token."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

from kalami_gateway.application.connections import Connection, Connections
from kalami_gateway.application.limits import ServiceLimits
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain.auth import AuthPolicy, CloseCode
from kalami_gateway.domain.expiry import Due, DueItem, ExpiryQueue
from kalami_gateway.domain.ports import Clock

log = logging.getLogger(__name__)

# The expiry queue is compacted when it holds this many times the entries live connections
# need (two each): closed connections' entries go, at a cost spread over the closes.
EXPIRY_SLACK: Final = 4
# A close due by the clock but not yet by the leeway is looked at again this much later.
LEEWAY_RECHECK_SECONDS: Final = 1.0


class TokenExpiry:
    def __init__(
        self,
        clock: Clock,
        auth: AuthPolicy,
        limits: ServiceLimits,
        connections: Connections,
        disconnect: Callable[[Connection, str], Awaitable[None]],
    ) -> None:
        self._clock = clock
        self._auth = auth
        self._warning = limits.token_expiry_warning
        self._connections = connections
        self._disconnect = disconnect
        self._queue = ExpiryQueue()

    def __len__(self) -> int:
        """Entries in the queue (the live connections' and closed ones' not yet dropped)."""
        return len(self._queue)

    def watch(self, conn: Connection) -> None:
        """When its token needs attention: a warning, then the close (per token)."""
        expires_at = conn.principal.expires_at
        if self._warning > 0:
            self._queue.schedule(expires_at - self._warning, DueItem(conn.id, Due.WARN, expires_at))
        self._queue.schedule(
            self._auth.expiry_due(expires_at), DueItem(conn.id, Due.EXPIRE, expires_at)
        )

    def forget_closed(self) -> None:
        """A connection closed: compact the queue if closed ones' entries pile up."""
        if len(self._queue) > EXPIRY_SLACK * (self._connections.open_count + 256):
            self._queue.retain(self._still_due)

    async def refresh(self, conn: Connection, token: str) -> None:
        verdict = self._auth.refresh(conn.principal.user_id, token, self._clock.now())
        if isinstance(verdict, p.Problem):
            log.info("ws_refresh_refused", extra={"connection_id": conn.id})
            await conn.channel.send(p.error(verdict, "refresh"))
            return
        conn.principal = verdict
        conn.token = token  # the bearer of every later backend call
        conn.warned = False
        conn.expired = False
        self.watch(conn)
        await conn.channel.send(p.Refreshed(p.ExpiryPayload(int(verdict.expires_at))))

    def _still_due(self, item: DueItem) -> bool:
        conn = self._connections.open(item.connection_id)
        return conn is not None and conn.principal.expires_at == item.expires_at

    async def expire_tokens(self) -> int:
        """Warn connections whose token expires within TOKEN_EXPIRY_WARNING (once per token)
        and close every connection whose token has expired (4003). Returns how many closed."""
        now = self._clock.now()
        closed = 0
        for item in self._queue.due(now):
            conn = self._connections.open(item.connection_id)
            if conn is None or conn.principal.expires_at != item.expires_at:
                continue  # gone, or refreshed since: this entry is for an old token
            if not self._auth.has_expired(item.expires_at, now):
                if item.kind is Due.EXPIRE:  # due by the clock, not yet by the leeway
                    self._queue.schedule(now + LEEWAY_RECHECK_SECONDS, item)
                elif not conn.warned:
                    conn.warned = True
                    await conn.channel.send(p.TokenExpiring(p.ExpiryPayload(int(item.expires_at))))
                continue
            if item.kind is Due.EXPIRE:
                if conn.turn_in_flight():
                    conn.expired = True  # the reply first (the turn is bounded by its deadline)
                    continue
                await self._close_expired(conn)
                closed += 1
        return closed

    async def after_turn(self, conn: Connection) -> None:
        """A turn's reply is out: 4003 now if the token expired during it and no refresh has
        replaced it since."""
        if (
            conn.expired
            and not conn.closed
            and self._auth.has_expired(conn.principal.expires_at, self._clock.now())
        ):
            await self._close_expired(conn)

    async def _close_expired(self, conn: Connection) -> None:
        await conn.channel.close(CloseCode.TOKEN_EXPIRED, "Token expired")
        await self._disconnect(conn, "token_expired")
