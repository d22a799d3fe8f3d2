"""The application service: the one face the adapters call, over the use cases it wires.

The WebSocket adapter calls ``open`` once, then ``handle_text`` / ``handle_binary`` for every
frame from a single receive loop, then ``disconnect`` however the connection ended. Start and
end of a session are awaited in that loop (the next frame waits, other connections do not); a
turn runs as a task of its own so the connection keeps answering while the backend works.

Resumable sessions (RESUME_GRACE > 0): a connection that goes away with a session open parks
it in the ``SessionParking`` store instead of ending it. A turn in flight keeps running
*detached*; its messages go to the store, which keeps them while the session is parked and
forwards them to whichever connection (on whichever instance) holds the session by then. A new
connection with ``resume=<token>`` claims the session; if the old connection still holds it
(half-open TCP), its instance is asked to let go (4007) first.

Where each part lives: ``admission`` (open: origin, token, cap; read rates), ``connections``
(each connection's stage), ``turns`` (the state machine's effects, turns, uploads),
``sessions`` (start and end at the backend), ``resume`` and ``parked`` (resumable sessions),
``expiry`` (tokens), ``push``, ``drain``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from kalami_gateway.application.admission import TOO_MANY_STARTS, Admission
from kalami_gateway.application.backend_calls import BackendCalls
from kalami_gateway.application.cleanup import SessionCleanup
from kalami_gateway.application.connections import (
    Connection,
    Connections,
    new_connection_id,
    new_resume_token,
)
from kalami_gateway.application.drain import Drain
from kalami_gateway.application.expiry import TokenExpiry
from kalami_gateway.application.limits import ServiceLimits
from kalami_gateway.application.parked import ParkedSessions
from kalami_gateway.application.push import PushDelivery
from kalami_gateway.application.resume import Resumption
from kalami_gateway.application.sessions import BackendSessions
from kalami_gateway.application.tasks import Background, Sleep
from kalami_gateway.application.turns import Turns
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain import session as s
from kalami_gateway.domain.auth import AuthPolicy, CloseCode
from kalami_gateway.domain.instance import InstanceConnections, InstanceStats
from kalami_gateway.domain.ports import (
    Backend,
    BackendHealth,
    ClientChannel,
    Clock,
    ConnectionDirectory,
    Metrics,
    ParkingEvents,
    SessionCredentials,
    SessionParking,
    Tracing,
)

log = logging.getLogger(__name__)


class GatewayService(ParkingEvents):
    """Every WebSocket connection of this process, and what happens on each."""

    def __init__(
        self,
        *,
        backend: Backend,
        directory: ConnectionDirectory,
        clock: Clock,
        auth: AuthPolicy,
        metrics: Metrics,
        limits: ServiceLimits,
        credentials: SessionCredentials,
        cleanup: SessionCleanup,
        instance: InstanceConnections,
        parking: SessionParking | None = None,
        sleep: Sleep = asyncio.sleep,
        new_id: Callable[[], str] = new_connection_id,
        new_resume_token: Callable[[], str] = new_resume_token,
        tracing: Tracing | None = None,
    ) -> None:
        self._directory = directory
        self._instance = instance
        self._metrics = metrics
        self._max_message_bytes = limits.max_message_bytes
        connections = self._connections = Connections()
        background = Background()
        calls = self._calls = BackendCalls(backend, metrics, limits)
        parked = self._parked = ParkedSessions(
            parking, limits, connections, cleanup, credentials, metrics
        )
        self._drain = Drain(connections, parked, cleanup, limits, sleep, self.disconnect)
        self._expiry = TokenExpiry(clock, auth, limits, connections, self.disconnect)
        sessions = BackendSessions(backend, calls, cleanup, credentials, clock, parked, tracing)
        self._turns = Turns(
            backend,
            calls,
            sessions,
            parked,
            self._expiry,
            connections,
            clock,
            metrics,
            limits,
            tracing,
        )
        self._resumption = Resumption(
            parked.store,
            limits,
            connections,
            metrics,
            background,
            sleep,
            self._turns.apply,
            self.disconnect,
        )
        self._admission = Admission(
            auth,
            directory,
            connections,
            instance,
            self._expiry,
            self._drain,
            clock,
            metrics,
            limits,
            new_id,
            new_resume_token,
        )
        self._push = PushDelivery(connections, instance, background)

    async def open(
        self,
        channel: ClientChannel,
        token: str | None,
        origin: str | None = None,
        resume: str | None = None,
    ) -> Connection | None:
        """Authenticate a new, accepted WebSocket (``origin``: its handshake's Origin header,
        if any; ``resume``: the resume token of an earlier connection whose session this one
        carries on). On refusal it is closed and None returned."""
        conn = await self._admission.open(channel, token, origin)
        if conn is not None and resume is not None:
            await self._resumption.resume(conn, resume)
        return conn

    async def handle_text(self, conn: Connection, frame: str) -> None:
        if len(frame) > self._max_message_bytes:
            await self._close_too_big(conn)
            return
        message = p.decode_client_message(frame)
        if isinstance(message, p.ProtocolError):
            self._metrics.message_received("invalid")
            await conn.channel.send(p.error(message.problem, message.in_reply_to))
            return
        self._metrics.message_received(p.message_type(message))
        if isinstance(message, p.Refresh):
            await self._expiry.refresh(conn, message.payload.token)
            return
        if (
            isinstance(message, p.StartSession)
            and conn.state.phase is s.Phase.IDLE
            and not self._admission.may_start(conn.principal.user_id)
        ):
            await conn.channel.send(p.error(TOO_MANY_STARTS, "start_session"))
            return
        await self._turns.apply(conn, message)

    async def handle_binary(self, conn: Connection, frame: bytes) -> None:
        if len(frame) > self._max_message_bytes:
            await self._close_too_big(conn)
            return
        self._metrics.message_received("audio_frame")
        await self._turns.apply(conn, s.AudioFrame(len(frame)), frame)

    def pause_after_text(self, conn: Connection) -> float:
        """Seconds to wait before reading this connection again (WS_MESSAGE_RATE)."""
        return self._admission.pause_after_text(conn)

    def pause_after_audio(self, conn: Connection, size: int) -> float:
        """The same for binary frames, by bytes (WS_AUDIO_RATE)."""
        return self._admission.pause_after_audio(conn, size)

    async def disconnect(self, conn: Connection, reason: str = "client_closed") -> None:
        """Forget the connection and clean up after it: park its session if it can be
        resumed, else end it. Safe to call more than once."""
        if conn.closed:
            return
        conn.closed_for = reason
        parks = self._parked.parks(conn, self._drain.draining)
        self._connections.leave(conn, parks)  # before any await: a turn delivers to the store
        self._expiry.forget_closed()
        self._instance.remove(conn.id)
        self._metrics.connection_closed(reason)
        await self._directory.unregister(conn.entry)
        log.info("ws_disconnected", extra={"connection_id": conn.id, "reason": reason})
        if parks and await self._parked.park(conn):
            return
        await self._turns.on_disconnect(conn)

    async def _close_too_big(self, conn: Connection) -> None:
        await conn.channel.close(
            CloseCode.MESSAGE_TOO_BIG, f"Message larger than {self._max_message_bytes} bytes"
        )
        await self.disconnect(conn, "message_too_big")

    async def forwarded(
        self, connection_id: str, key: str, messages: Sequence[bytes], turn_done: bool
    ) -> None:
        await self._resumption.forwarded(connection_id, key, messages, turn_done)

    async def release(self, connection_id: str, key: str) -> None:
        await self._resumption.release(connection_id, key)

    async def expire_tokens(self) -> int:
        """Warn connections whose token expires within TOKEN_EXPIRY_WARNING (once per token)
        and close every connection whose token has expired (4003). Returns how many closed."""
        return await self._expiry.expire_tokens()

    async def expire_parked(self) -> int:
        """End the parked sessions whose grace has lapsed (each once, cluster-wide)."""
        return await self._parked.expire()

    async def parked_sessions(self) -> int | None:
        """Sessions waiting for their client (cluster-wide on Redis); None if unknown."""
        return await self._parked.count()

    async def deliver_push(self, user_id: str, payload: bytes) -> int:
        """Send a pushed JSON object to the user's connections on this instance (each send a
        task of its own); how many."""
        return self._push.deliver(user_id, payload)

    def instance_stats(self) -> InstanceStats:
        """This instance's connections (the cluster's are the directory's)."""
        return self._instance.stats()

    async def backend_health(self) -> BackendHealth:
        """The backend's readiness, within the lower of 5 s and BACKEND_TIMEOUT."""
        return await self._calls.health()

    async def drain(self) -> None:
        """Refuse new connections and close every open one. With resumable sessions on
        Redis: 1012, sessions parked for another instance, turns in flight given
        ``shutdown_turn_wait`` to finish and park their replies. Otherwise: 1001 and every
        session ended. Then a last attempt at every end call still being retried."""
        await self._drain.drain()
