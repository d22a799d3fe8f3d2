"""Who may connect, and how fast a connection is read: the handshake's Origin and token
judged, the per-user cap asked of the directory (4004 over it), the new connection welcomed;
the budgets of messages, audio bytes and session starts (WS_MESSAGE_RATE, WS_AUDIO_RATE,
SESSION_START_RATE)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from kalami_gateway.application.connections import Connection, Connections
from kalami_gateway.application.drain import Drain
from kalami_gateway.application.expiry import TokenExpiry
from kalami_gateway.application.limits import ServiceLimits
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain.auth import ORIGIN_NOT_ALLOWED, AuthFailure, AuthPolicy, CloseCode
from kalami_gateway.domain.instance import InstanceConnections
from kalami_gateway.domain.ports import ClientChannel, Clock, ConnectionDirectory, Metrics
from kalami_gateway.domain.rate import TokenBucket, bucket

log = logging.getLogger(__name__)

TOO_MANY_REASON: Final = "Too many connections"
TOO_MANY_STARTS: Final = p.Problem(
    "Too many sessions started in the last minute; wait a few seconds, then send "
    "start_session again.",
    p.ErrorCode.RATE_LIMITED,
)


class Admission:
    def __init__(
        self,
        auth: AuthPolicy,
        directory: ConnectionDirectory,
        connections: Connections,
        instance: InstanceConnections,
        expiry: TokenExpiry,
        drain: Drain,
        clock: Clock,
        metrics: Metrics,
        limits: ServiceLimits,
        new_id: Callable[[], str],
        new_resume_token: Callable[[], str],
    ) -> None:
        self._auth = auth
        self._directory = directory
        self._connections = connections
        self._instance = instance
        self._expiry = expiry
        self._drain = drain
        self._clock = clock
        self._metrics = metrics
        self._limits = limits
        self._new_id = new_id
        self._new_resume_token = new_resume_token
        self._starts: dict[str, TokenBucket] = {}  # user -> their start_session budget

    async def open(
        self, channel: ClientChannel, token: str | None, origin: str | None
    ) -> Connection | None:
        """Authenticate a new, accepted WebSocket and welcome it (``connected``). On refusal
        it is closed and None returned."""
        if self._drain.draining:
            await channel.close(*self._drain.close_frame())
            return None
        now = self._clock.now()
        verdict = (
            self._auth.authenticate(token, now)
            if self._auth.origin_allowed(origin)
            else ORIGIN_NOT_ALLOWED
        )
        if isinstance(verdict, AuthFailure):
            log.info("ws_auth_refused", extra={"code": int(verdict.code), "why": verdict.why})
            self._metrics.connection_closed(f"auth_{int(verdict.code)}")
            await channel.close(verdict.code, verdict.reason)
            return None
        assert token is not None  # noqa: S101  # authenticate refuses a missing token
        conn = Connection(self._new_id(), verdict, token, channel, now, self._new_resume_token())
        if not await self._directory.register(conn.entry, self._limits.max_connections_per_user):
            log.info("ws_refused_over_cap", extra={"user_id": verdict.user_id})
            self._metrics.connection_closed("too_many_connections")
            await channel.close(CloseCode.TOO_MANY_CONNECTIONS, TOO_MANY_REASON)
            return None
        if self._drain.draining:  # the drain began while the directory was being asked
            await self._directory.unregister(conn.entry)
            await channel.close(*self._drain.close_frame())
            return None
        self._connections.add(conn)
        self._expiry.watch(conn)
        self._instance.add(conn.id, verdict.user_id)
        started = self._clock.monotonic()
        conn.text_rate = bucket(self._limits.message_rate, started)
        conn.audio_rate = bucket(self._limits.audio_rate, started)
        log.info("ws_connected", extra={"connection_id": conn.id, "user_id": verdict.user_id})
        await channel.send(
            p.Connected(p.ConnectedPayload(conn.id, int(verdict.expires_at), conn.resume_token))
        )
        return conn

    def may_start(self, user_id: str) -> bool:
        """SESSION_START_RATE: each user's budget of new sessions, across their connections
        on this instance. Budgets outlive connections (a client that connects, starts and
        drops over and over is still counted) until they have refilled."""
        rate = self._limits.session_start_rate
        if rate <= 0:
            return True
        now = self._clock.monotonic()
        budget = self._starts.get(user_id)
        if budget is None:
            if len(self._starts) > 2 * self._connections.open_count + 1024:
                self._starts = {u: b for u, b in self._starts.items() if not b.full(now)}
            budget = self._starts[user_id] = TokenBucket(rate / 60, now, burst_seconds=60)
        return budget.try_take(1, now)

    def pause_after_text(self, conn: Connection) -> float:
        """Seconds to wait before reading this connection again (WS_MESSAGE_RATE): a client
        over its rate is read more slowly, never refused (TCP pushes back on it)."""
        rate = conn.text_rate
        return 0.0 if rate is None else rate.take(1, self._clock.monotonic())

    def pause_after_audio(self, conn: Connection, size: int) -> float:
        """The same for binary frames, by bytes (WS_AUDIO_RATE)."""
        rate = conn.audio_rate
        return 0.0 if rate is None else rate.take(size, self._clock.monotonic())
