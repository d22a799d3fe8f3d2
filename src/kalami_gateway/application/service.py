"""The application service: reacts to connect, frames and disconnect by driving the state machine.

The WebSocket adapter calls ``open`` once, then ``handle_text`` / ``handle_binary`` for every
frame from a single receive loop, then ``disconnect`` however the connection ended. Start and
end of a session are awaited in that loop (the next frame waits, other connections do not); a
turn runs as a task of its own so the connection keeps answering while the backend works.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec

from kalami_gateway.application.cleanup import SessionCleanup
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain import session as s
from kalami_gateway.domain.auth import (
    ORIGIN_NOT_ALLOWED,
    AuthFailure,
    AuthPolicy,
    CloseCode,
    Principal,
)
from kalami_gateway.domain.instance import InstanceConnections, InstanceStats
from kalami_gateway.domain.ports import (
    Backend,
    BackendError,
    BackendErrorKind,
    BackendHealth,
    ClientChannel,
    Clock,
    ConnectionDirectory,
    ConnectionEntry,
    Metrics,
    Utterance,
)
from kalami_gateway.domain.rate import TokenBucket, bucket
from kalami_gateway.domain.retry import already_gone

log = logging.getLogger(__name__)

SHUTDOWN_REASON = "Server shutting down"
READINESS_SECONDS = 5.0
T = TypeVar("T")
TOO_MANY_REASON = "Too many connections"


class Connection:
    """One open, authenticated WebSocket and its conversation."""

    __slots__ = (
        "audio_rate",
        "channel",
        "chunks",
        "closed",
        "entry",
        "id",
        "principal",
        "state",
        "text_rate",
        "token",
        "turn",
        "warned",
    )

    def __init__(
        self,
        connection_id: str,
        principal: Principal,
        token: str,
        channel: ClientChannel,
        connected_at: float,
    ):
        self.id = connection_id
        self.entry = ConnectionEntry(
            connection_id, principal.user_id, principal.expires_at, connected_at
        )
        self.principal = principal
        self.token = token
        self.channel = channel
        self.state = s.IDLE
        self.chunks: list[bytes] = []
        self.turn: asyncio.Task[None] | None = None
        self.closed = False
        self.warned = False  # token_expiring sent for the current token
        self.text_rate: TokenBucket | None = None
        self.audio_rate: TokenBucket | None = None


class ServiceLimits(msgspec.Struct, frozen=True):
    max_message_bytes: int
    max_audio_bytes: int
    max_connections_per_user: int = 0  # 0: no cap
    backend_timeout: float = 30.0  # every backend call finishes or fails within it
    token_expiry_warning: float = 60.0  # token_expiring this long before exp (0: never)
    message_rate: float = 0.0  # text messages per second per connection (0: no limit)
    audio_rate: float = 0.0  # binary bytes per second per connection (0: no limit)
    end_retry_window: float = 300.0  # how long a failed end call is retried in the background


class GatewayService:
    """Every WebSocket connection of this process, and what happens on each."""

    def __init__(
        self,
        backend: Backend,
        directory: ConnectionDirectory,
        clock: Clock,
        auth: AuthPolicy,
        metrics: Metrics,
        limits: ServiceLimits,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        instance: InstanceConnections | None = None,
        cleanup: SessionCleanup | None = None,
    ) -> None:
        self._backend = backend
        self._directory = directory
        self._instance = InstanceConnections() if instance is None else instance
        self._clock = clock
        self._auth = auth
        self._metrics = metrics
        self._limits = limits
        self._session_limits = s.Limits(max_audio_bytes=limits.max_audio_bytes)
        self._cleanup = cleanup or SessionCleanup(
            backend, metrics, clock, limits.backend_timeout, limits.end_retry_window
        )
        self._new_id = new_id
        self._live: dict[str, Connection] = {}
        self._sending: set[asyncio.Task[None]] = set()  # pushes on their way out
        self._draining = False

    async def open(
        self, channel: ClientChannel, token: str | None, origin: str | None = None
    ) -> Connection | None:
        """Authenticate a new, accepted WebSocket (``origin``: its handshake's Origin header,
        if any). On refusal it is closed and None returned."""
        if self._draining:
            await channel.close(CloseCode.GOING_AWAY, SHUTDOWN_REASON)
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
        conn = Connection(self._new_id(), verdict, token, channel, now)
        if not await self._directory.register(conn.entry, self._limits.max_connections_per_user):
            log.info("ws_refused_over_cap", extra={"user_id": verdict.user_id})
            self._metrics.connection_closed("too_many_connections")
            await channel.close(CloseCode.TOO_MANY_CONNECTIONS, TOO_MANY_REASON)
            return None
        if self._draining:  # the drain began while the directory was being asked
            await self._directory.unregister(conn.entry)
            await channel.close(CloseCode.GOING_AWAY, SHUTDOWN_REASON)
            return None
        self._live[conn.id] = conn
        self._instance.add(conn.id, verdict.user_id)
        started = self._clock.monotonic()
        conn.text_rate = bucket(self._limits.message_rate, started)
        conn.audio_rate = bucket(self._limits.audio_rate, started)
        log.info("ws_connected", extra={"connection_id": conn.id, "user_id": verdict.user_id})
        await channel.send(p.Connected(p.ConnectedPayload(conn.id, int(verdict.expires_at))))
        return conn

    def instance_stats(self) -> InstanceStats:
        """This instance's connections (the cluster's are the directory's)."""
        return self._instance.stats()

    async def deliver_push(self, user_id: str, payload: bytes) -> int:
        """Send a pushed JSON object to the user's connections on this instance.

        Each send is a task of its own: a connection that does not read must not hold up the
        publisher or the user's other devices (its channel lets it go when it falls behind)."""
        message = p.Push(msgspec.Raw(payload))
        targets = [self._live[c] for c in self._instance.of_user(user_id) if c in self._live]
        for conn in targets:
            task = asyncio.create_task(conn.channel.send(message))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        return len(targets)

    async def handle_text(self, conn: Connection, frame: str) -> None:
        if len(frame) > self._limits.max_message_bytes:
            await self._close_too_big(conn)
            return
        message = p.decode_client_message(frame)
        if isinstance(message, p.ProtocolError):
            self._metrics.message_received("invalid")
            await conn.channel.send(p.error(message.message))
            return
        self._metrics.message_received(p.message_type(message))
        if isinstance(message, p.Refresh):
            await self._refresh(conn, message.payload.token)
            return
        await self._apply(conn, message)

    def pause_after_text(self, conn: Connection) -> float:
        """Seconds to wait before reading this connection again (WS_MESSAGE_RATE): a client
        over its rate is read more slowly, never refused (TCP pushes back on it)."""
        rate = conn.text_rate
        return 0.0 if rate is None else rate.take(1, self._clock.monotonic())

    def pause_after_audio(self, conn: Connection, size: int) -> float:
        """The same for binary frames, by bytes (WS_AUDIO_RATE)."""
        rate = conn.audio_rate
        return 0.0 if rate is None else rate.take(size, self._clock.monotonic())

    async def handle_binary(self, conn: Connection, frame: bytes) -> None:
        if len(frame) > self._limits.max_message_bytes:
            await self._close_too_big(conn)
            return
        self._metrics.message_received("audio_frame")
        await self._apply(conn, s.AudioFrame(len(frame)), frame)

    async def disconnect(self, conn: Connection, reason: str = "client_closed") -> None:
        """Forget the connection and clean up after it. Safe to call more than once."""
        if conn.closed:
            return
        conn.closed = True
        self._live.pop(conn.id, None)
        self._instance.remove(conn.id)
        self._metrics.connection_closed(reason)
        await self._directory.unregister(conn.entry)
        log.info("ws_disconnected", extra={"connection_id": conn.id, "reason": reason})
        effects = s.on_disconnect(conn.state)
        conn.state = s.IDLE
        for effect in effects:
            await self._execute(conn, effect, None)

    async def _refresh(self, conn: Connection, token: str) -> None:
        verdict = self._auth.refresh(conn.principal.user_id, token, self._clock.now())
        if isinstance(verdict, str):
            log.info("ws_refresh_refused", extra={"connection_id": conn.id})
            await conn.channel.send(p.error(verdict))
            return
        conn.principal = verdict
        conn.token = token  # the bearer of every later backend call
        conn.warned = False
        await conn.channel.send(p.Refreshed(p.ExpiryPayload(int(verdict.expires_at))))

    async def expire_tokens(self) -> int:
        """Warn connections whose token expires within TOKEN_EXPIRY_WARNING (once per token)
        and close every connection whose token has expired (4003). Returns how many closed."""
        now = self._clock.now()
        warning = self._limits.token_expiry_warning
        if warning > 0:
            for conn in [c for c in self._live.values() if not c.warned]:
                expires_at = conn.principal.expires_at
                if now >= expires_at - warning and not self._auth.has_expired(expires_at, now):
                    conn.warned = True
                    await conn.channel.send(p.TokenExpiring(p.ExpiryPayload(int(expires_at))))
        expired = [
            c for c in self._live.values() if self._auth.has_expired(c.principal.expires_at, now)
        ]
        for conn in expired:
            await conn.channel.close(CloseCode.TOKEN_EXPIRED, "Token expired")
            await self.disconnect(conn, "token_expired")
        return len(expired)

    async def drain(self) -> None:
        """Refuse new connections, close every open one with 1001 and end their sessions
        (and make a last attempt at every end call still being retried)."""
        self._draining = True
        await asyncio.gather(*(self._shut(conn) for conn in list(self._live.values())))
        await self._cleanup.close()

    async def backend_health(self) -> BackendHealth:
        """The backend's readiness, within the lower of 5 s and BACKEND_TIMEOUT."""
        try:
            async with asyncio.timeout(min(READINESS_SECONDS, self._limits.backend_timeout)):
                return await self._backend.health()
        except TimeoutError:
            return BackendHealth.UNREACHABLE

    async def _on_time(self, call: Awaitable[T]) -> T:
        """A backend call that finishes or fails within BACKEND_TIMEOUT of its start, whatever
        the backend does (httpx's own timeouts bound each read, not the call)."""
        try:
            async with asyncio.timeout(self._limits.backend_timeout):
                return await call
        except TimeoutError:
            raise BackendError(BackendErrorKind.TIMEOUT, "the backend timed out.") from None

    async def _shut(self, conn: Connection) -> None:
        await conn.channel.close(CloseCode.GOING_AWAY, SHUTDOWN_REASON)
        await self.disconnect(conn, "server_shutdown")

    async def _close_too_big(self, conn: Connection) -> None:
        await conn.channel.close(
            CloseCode.MESSAGE_TOO_BIG, f"Message larger than {self._limits.max_message_bytes} bytes"
        )
        await self.disconnect(conn, "message_too_big")

    async def _apply(self, conn: Connection, event: s.Event, frame: bytes | None = None) -> None:
        decision = s.decide(conn.state, event, self._session_limits)
        conn.state = decision.state
        for effect in decision.effects:
            await self._execute(conn, effect, frame)

    async def _execute(self, conn: Connection, effect: s.Effect, frame: bytes | None) -> None:
        match effect:
            case s.Send(message=message):
                await conn.channel.send(message)
            case s.AppendAudio():
                assert frame is not None  # noqa: S101  # only a binary frame appends
                conn.chunks.append(frame)
                self._metrics.audio_received(len(frame))
            case s.StartUtterance() | s.DropUtterance():
                conn.chunks = []
            case s.CreateSession(profile_id=profile_id, topic=topic):
                await self._create_session(conn, profile_id, topic)
            case s.EndSession(session_id=session_id):
                await self._end_session(conn, session_id)
            case s.SubmitUtterance(session_id=session_id, audio_format=audio_format):
                utterance = Utterance(conn.chunks, audio_format)
                conn.chunks = []
                conn.turn = asyncio.create_task(self._run_turn(conn, session_id, utterance))
            case s.SubmitEncodedAudio():
                conn.turn = asyncio.create_task(self._run_encoded_turn(conn, effect))
            case s.CancelTurn():
                await self._cancel_turn(conn)

    async def _create_session(self, conn: Connection, profile_id: str, topic: str | None) -> None:
        started = self._clock.monotonic()
        call = asyncio.ensure_future(self._backend.create_session(conn.token, profile_id, topic))
        try:
            try:
                created = await self._on_time(asyncio.shield(call))
            except BackendError as exc:
                if exc.kind is BackendErrorKind.TIMEOUT and not call.done():
                    # It may still succeed: a session then exists that no client owns.
                    self._cleanup.adopt(call, conn.token, started)
                raise
        except BackendError as exc:
            self._metrics.backend_error(exc.kind)
            log.warning(
                "backend_create_session_failed",
                extra={"connection_id": conn.id, "kind": exc.kind.value, "status": exc.status},
            )
            await self._apply(
                conn, s.SessionCreateFailed(f"Could not start the session: {exc.detail}")
            )
            return
        if conn.closed:
            # The client left while the backend was creating the session: do not leak it.
            await self._end_session(conn, created.id)
            return
        await self._apply(conn, s.SessionCreated(created.id, profile_id, created.topic))

    async def _end_session(self, conn: Connection, session_id: str) -> None:
        try:
            await self._on_time(self._backend.end_session(conn.token, session_id))
        except BackendError as exc:
            self._metrics.backend_error(exc.kind)
            log.warning(
                "backend_end_session_failed",
                extra={"connection_id": conn.id, "session_id": session_id, "kind": exc.kind.value},
            )
            if not already_gone(exc.status):
                self._cleanup.end_later(conn.token, session_id)  # the client is not kept waiting
        if not conn.closed:
            await conn.channel.send(p.SessionEnded(p.SessionEndedPayload(session_id)))

    async def _cancel_turn(self, conn: Connection) -> None:
        turn, conn.turn = conn.turn, None
        if turn is None or turn.done() or turn is asyncio.current_task():
            return
        turn.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await turn

    async def _run_encoded_turn(self, conn: Connection, effect: s.SubmitEncodedAudio) -> None:
        try:
            audio = base64.b64decode(effect.audio_base64, validate=True)
        except (binascii.Error, ValueError):
            await self._finish_turn(
                conn,
                "invalid",
                0.0,
                s.TurnFailed(
                    "audio_base64 is not valid base64; send the utterance's bytes base64-encoded."
                ),
            )
            return
        if len(audio) > self._limits.max_audio_bytes:
            await self._finish_turn(
                conn,
                "too_large",
                0.0,
                s.TurnFailed(
                    f"The utterance is larger than the {self._limits.max_audio_bytes}-byte limit."
                ),
            )
            return
        await self._run_turn(conn, effect.session_id, Utterance((audio,), effect.audio_format))

    async def _run_turn(self, conn: Connection, session_id: str, utterance: Utterance) -> None:
        started = self._clock.monotonic()
        event: s.TurnSucceeded | s.TurnFailed
        try:
            reply = await self._on_time(
                self._backend.submit_utterance(conn.token, session_id, utterance)
            )
        except BackendError as exc:
            self._metrics.backend_error(exc.kind)
            log.warning(
                "voice_turn_failed",
                extra={"connection_id": conn.id, "kind": exc.kind.value, "status": exc.status},
            )
            outcome = f"backend_{exc.kind.value}"
            event = s.TurnFailed(f"Could not process the utterance: {exc.detail} Please try again.")
        else:
            outcome = "ok"
            event = s.TurnSucceeded(
                transcription=reply.user_text,
                reply_text=reply.assistant_text,
                corrections=reply.corrections,
                vocabulary=reply.vocabulary_introduced,
                audio_base64=reply.assistant_audio_base64,
            )
        await self._finish_turn(conn, outcome, self._clock.monotonic() - started, event)

    async def _finish_turn(
        self, conn: Connection, outcome: str, seconds: float, event: s.TurnSucceeded | s.TurnFailed
    ) -> None:
        self._metrics.turn_finished(outcome, seconds)
        if conn.turn is asyncio.current_task():
            conn.turn = None
        await self._apply(conn, event)
