"""The application service: reacts to connect, frames and disconnect by driving the state machine.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import msgspec

from kalami_gateway.application.cleanup import SessionCleanup
from kalami_gateway.domain import parking as pk
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain import session as s
from kalami_gateway.domain.auth import (
    ORIGIN_NOT_ALLOWED,
    AuthFailure,
    AuthPolicy,
    CloseCode,
    Principal,
)
from kalami_gateway.domain.expiry import Due, DueItem, ExpiryQueue
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
    ParkingEvents,
    ParkingUnavailable,
    SessionCredentials,
    SessionParking,
    TurnReply,
    Utterance,
    UtteranceUpload,
)
from kalami_gateway.domain.rate import TokenBucket, bucket

log = logging.getLogger(__name__)

SHUTDOWN_REASON = "Server shutting down"
RESTART_REASON = "Service restart"
RESUMED_ELSEWHERE_REASON = "Session resumed elsewhere"
READINESS_SECONDS = 5.0
T = TypeVar("T")
TOO_MANY_REASON = "Too many connections"
TAKEOVER_POLL_SECONDS = 0.02
# The expiry queue is compacted when it holds this many times the entries live connections
# need (two each): closed connections' entries go, at a cost spread over the closes.
EXPIRY_SLACK = 4
TOO_MANY_STARTS = (
    "Too many sessions started in the last minute; wait a few seconds, then send "
    "start_session again."
)
LOST_REPLY = (
    "The reply to your last utterance was lost while the session moved; please say it again."
)

Forwarded = tuple[str, Sequence[bytes], bool]  # session key, encoded messages, turn done
# An end call carries the client's own token only if it is good for this much longer.
OWN_TOKEN_MARGIN = 30.0


def new_resume_token() -> str:
    return secrets.token_urlsafe(24)  # 192 random bits


class Connection:
    """One open, authenticated WebSocket and its conversation."""

    __slots__ = (
        "audio_rate",
        "channel",
        "chunks",
        "closed",
        "detached",
        "entry",
        "expired",
        "id",
        "inbox",
        "principal",
        "resume_token",
        "session_key",
        "state",
        "text_rate",
        "token",
        "turn",
        "upload",
        "warned",
        "watchdog",
    )

    def __init__(
        self,
        connection_id: str,
        principal: Principal,
        token: str,
        channel: ClientChannel,
        connected_at: float,
        resume_token: str = "",
    ):
        self.id = connection_id
        self.resume_token = resume_token
        self.session_key: str | None = None  # the open session's key in the parking store
        self.detached = False  # gone, but its turn runs on and delivers to the parking store
        # Forwarded turn messages that arrive while a resume or a park is under way.
        self.inbox: list[Forwarded] | None = None
        self.watchdog: asyncio.Task[None] | None = None  # a resumed session's remote turn
        self.entry = ConnectionEntry(
            connection_id, principal.user_id, principal.expires_at, connected_at
        )
        self.principal = principal
        self.token = token
        self.channel = channel
        self.state = s.IDLE
        self.chunks: list[bytes] = []  # the utterance, when it is buffered
        self.upload: UtteranceUpload | None = None  # the utterance, when it is streamed
        self.turn: asyncio.Task[None] | None = None
        self.closed = False
        self.warned = False  # token_expiring sent for the current token
        self.expired = False  # the token expired during a turn: 4003 once its reply is out
        self.text_rate: TokenBucket | None = None
        self.audio_rate: TokenBucket | None = None


class ServiceLimits(msgspec.Struct, frozen=True):
    max_message_bytes: int
    max_audio_bytes: int
    max_connections_per_user: int = 0  # 0: no cap
    backend_timeout: float = 30.0  # every backend call finishes or fails within it
    token_expiry_warning: float = 60.0  # token_expiring this long before exp (0: never)
    message_rate: float = 0.0  # text messages per second per connection (0: no limit)
    session_start_rate: float = 0.0  # start_session per minute per user (0: no limit)
    audio_rate: float = 0.0  # binary bytes per second per connection (0: no limit)
    end_retry_window: float = 300.0  # how long a failed end call is retried in the background
    resume_grace: float = 0.0  # how long a session waits for its client to resume (0: never)
    restart_parks: bool = False  # a shutdown parks sessions (1012) instead of ending them
    shutdown_turn_wait: float = 5.0  # turns in flight at a restart get this long to finish
    # A resumed session's turn runs where it started; if its messages have not come this long
    # past BACKEND_TIMEOUT, they were lost (their instance died) and the client is told so.
    remote_turn_slack: float = 5.0
    stream_uploads: bool = False  # stream each utterance to the backend while it is recorded


class GatewayService(ParkingEvents):
    """Every WebSocket connection of this process, and what happens on each."""

    def __init__(
        self,
        backend: Backend,
        directory: ConnectionDirectory,
        clock: Clock,
        auth: AuthPolicy,
        metrics: Metrics,
        limits: ServiceLimits,
        credentials: SessionCredentials,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        instance: InstanceConnections | None = None,
        cleanup: SessionCleanup | None = None,
        parking: SessionParking | None = None,
        new_resume_token: Callable[[], str] = new_resume_token,
    ) -> None:
        self._backend = backend
        self._credentials = credentials
        self._directory = directory
        self._instance = InstanceConnections() if instance is None else instance
        self._clock = clock
        self._auth = auth
        self._metrics = metrics
        self._limits = limits
        self._session_limits = s.Limits(max_audio_bytes=limits.max_audio_bytes)
        self._cleanup = cleanup or SessionCleanup(
            backend,
            metrics,
            clock,
            limits.backend_timeout,
            limits.end_retry_window,
            self._credentials,
        )
        self._new_id = new_id
        self._new_resume_token = new_resume_token
        # Resumable sessions need a store and a grace; without either, a drop ends the session.
        self._parking = parking if limits.resume_grace > 0 else None
        self._live: dict[str, Connection] = {}
        self._expiry = ExpiryQueue()
        self._leaving: dict[str, Connection] = {}  # parking under way (connection id)
        self._detached: dict[str, Connection] = {}  # turns running on (session key)
        self._sending: set[asyncio.Task[None]] = set()  # pushes on their way out
        self._starts: dict[str, TokenBucket] = {}  # user -> their start_session budget
        self._draining = False

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
        if self._draining:
            await channel.close(*self._drain_close())
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
        if self._draining:  # the drain began while the directory was being asked
            await self._directory.unregister(conn.entry)
            await channel.close(*self._drain_close())
            return None
        self._live[conn.id] = conn
        self._watch_expiry(conn)
        self._instance.add(conn.id, verdict.user_id)
        started = self._clock.monotonic()
        conn.text_rate = bucket(self._limits.message_rate, started)
        conn.audio_rate = bucket(self._limits.audio_rate, started)
        log.info("ws_connected", extra={"connection_id": conn.id, "user_id": verdict.user_id})
        await channel.send(
            p.Connected(p.ConnectedPayload(conn.id, int(verdict.expires_at), conn.resume_token))
        )
        if resume is not None:
            await self._resume(conn, resume)
        return conn

    async def _resume(self, conn: Connection, resume_token: str) -> None:
        """Carry on the session ``resume_token`` names: ``session_resumed``, then what was kept
        for it, then (through ``forwarded``) the rest of a turn still running elsewhere."""
        if self._parking is None:
            await conn.channel.send(p.error(pk.refusal_message(pk.Refusal.DISABLED)))
            return
        conn.inbox = []  # forwarded messages wait until the kept ones are sent
        try:
            claim = await self._claim(conn, resume_token)
        except ParkingUnavailable:
            claim = pk.ResumeRefused(pk.Refusal.UNAVAILABLE)
        if not isinstance(claim, pk.Resumed):
            conn.inbox = None
            why = claim.refusal if isinstance(claim, pk.ResumeRefused) else pk.Refusal.STILL_HELD
            log.info("ws_resume_refused", extra={"connection_id": conn.id, "why": why.name})
            await conn.channel.send(p.error(pk.refusal_message(why)))
            return
        record = claim.record
        conn.session_key = record.key
        conn.state = pk.resumed_state(record, claim.phase)
        self._metrics.session_parking("resumed")
        log.info(
            "session_resumed",
            extra={
                "connection_id": conn.id,
                "session_id": record.session_id,
                "kept": len(claim.kept),
            },
        )
        await conn.channel.send(
            p.SessionResumed(
                p.SessionResumedPayload(
                    record.session_id, record.profile_id, record.topic, claim.phase
                )
            )
        )
        if claim.dropped:
            await conn.channel.send(p.error(pk.dropped_message(claim.dropped)))
        await self._send_kept(conn, claim.kept)
        if conn.state.phase is s.Phase.PROCESSING:
            self._watch_remote_turn(conn)
        inbox = conn.inbox
        while inbox:
            key, messages, turn_done = inbox.pop(0)
            await self._relay(conn, key, messages, turn_done)
        conn.inbox = None

    async def _claim(self, conn: Connection, resume_token: str) -> pk.Claim:
        """Claim the session; if its old connection still holds it, ask that one's instance
        to let go, and claim again until it has (bounded by TAKEOVER_SECONDS)."""
        assert self._parking is not None  # noqa: S101  # only called with a store
        asked = False
        for _ in range(round(pk.TAKEOVER_SECONDS / TAKEOVER_POLL_SECONDS)):
            claim = await self._parking.claim(
                resume_token, conn.principal.user_id, conn.resume_token, conn.id
            )
            if not isinstance(claim, pk.HeldElsewhere):
                return claim
            if not asked:
                asked = True
                await self._parking.ask_release(claim.holder, claim.key)
            else:
                await asyncio.sleep(TAKEOVER_POLL_SECONDS)
        return pk.ResumeRefused(pk.Refusal.STILL_HELD)

    async def _send_kept(self, conn: Connection, messages: Sequence[bytes]) -> None:
        for data in messages:
            message = p.decode_kept(data)
            if message is not None:
                await conn.channel.send(message)

    async def forwarded(
        self, connection_id: str, key: str, messages: Sequence[bytes], turn_done: bool
    ) -> None:
        conn = self._live.get(connection_id) or self._leaving.get(connection_id)
        if conn is not None and conn.inbox is not None:
            conn.inbox.append((key, messages, turn_done))  # a resume or a park is under way
            return
        if conn is not None and not conn.closed:
            await self._relay(conn, key, messages, turn_done)
            return
        # The connection has gone since the store forwarded this: the session follows it (it
        # is parked, or held elsewhere by now) and so do the messages.
        assert self._parking is not None  # noqa: S101  # only a store forwards
        await self._parking.park(key, connection_id, "active", None)
        await self._parking.keep(key, messages, turn_done)

    async def release(self, connection_id: str, key: str) -> None:
        conn = self._live.get(connection_id)
        if conn is not None and conn.session_key == key:
            log.info("ws_session_taken_over", extra={"connection_id": conn.id})
            await self.disconnect(conn, "resumed_elsewhere")  # parks it for the claimant
            # The close frame goes out in the background: a half-open peer may never take it.
            self._spawn(conn.channel.close(CloseCode.RESUMED_ELSEWHERE, RESUMED_ELSEWHERE_REASON))
            return
        if connection_id in self._leaving or self._parking is None:
            return  # its park is under way; the claimant asks again
        # A holder this instance no longer has (its park failed): let the session go for it.
        await self._parking.park(key, connection_id, "active", None)

    async def _relay(
        self, conn: Connection, key: str, messages: Sequence[bytes], turn_done: bool
    ) -> None:
        """A turn's messages from where the session was, for the connection that has it now."""
        if conn.session_key != key:
            return  # the client ended that session meanwhile
        await self._send_kept(conn, messages)
        if turn_done:
            self._stop_watchdog(conn)
            await self._apply(conn, s.TurnRelayed())

    def _watch_remote_turn(self, conn: Connection) -> None:
        async def watch() -> None:
            await asyncio.sleep(self._limits.backend_timeout + self._limits.remote_turn_slack)
            conn.watchdog = None
            await self._apply(conn, s.TurnFailed(LOST_REPLY))

        conn.watchdog = asyncio.create_task(watch())

    @staticmethod
    def _stop_watchdog(conn: Connection) -> None:
        watchdog, conn.watchdog = conn.watchdog, None
        if watchdog is not None and watchdog is not asyncio.current_task():
            watchdog.cancel()

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def parked_sessions(self) -> int | None:
        """Sessions waiting for their client (cluster-wide on Redis); None if unknown."""
        if self._parking is None:
            return 0
        try:
            return await self._parking.parked()
        except ParkingUnavailable:
            return None

    async def expire_parked(self) -> int:
        """End the parked sessions whose grace has lapsed (each once, cluster-wide)."""
        if self._parking is None:
            return 0
        lapsed = await self._parking.take_lapsed()
        for record in lapsed:
            self._metrics.session_parking("expired")
            log.info("session_expired", extra={"session_id": record.session_id})
            detached = self._detached.pop(record.key, None)
            if detached is not None and detached.turn is not None:
                detached.turn.cancel()
        await asyncio.gather(*(self._end_at_backend(r.claims, r.session_id) for r in lapsed))
        return len(lapsed)

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
            self._spawn(conn.channel.send(message))
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
        if (
            isinstance(message, p.StartSession)
            and conn.state.phase is s.Phase.IDLE
            and not self._may_start(conn.principal.user_id)
        ):
            await conn.channel.send(p.error(TOO_MANY_STARTS))
            return
        await self._apply(conn, message)

    def _may_start(self, user_id: str) -> bool:
        """SESSION_START_RATE: each user's budget of new sessions, across their connections
        on this instance. Budgets outlive connections (a client that connects, starts and
        drops over and over is still counted) until they have refilled."""
        rate = self._limits.session_start_rate
        if rate <= 0:
            return True
        now = self._clock.monotonic()
        budget = self._starts.get(user_id)
        if budget is None:
            if len(self._starts) > 2 * len(self._live) + 1024:
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

    async def handle_binary(self, conn: Connection, frame: bytes) -> None:
        if len(frame) > self._limits.max_message_bytes:
            await self._close_too_big(conn)
            return
        self._metrics.message_received("audio_frame")
        await self._apply(conn, s.AudioFrame(len(frame)), frame)

    async def disconnect(self, conn: Connection, reason: str = "client_closed") -> None:
        """Forget the connection and clean up after it: park its session if it can be
        resumed, else end it. Safe to call more than once."""
        if conn.closed:
            return
        conn.closed = True
        self._live.pop(conn.id, None)
        if len(self._expiry) > EXPIRY_SLACK * (len(self._live) + 256):
            self._expiry.retain(self._still_due)
        self._instance.remove(conn.id)
        self._metrics.connection_closed(reason)
        parks = self._parks(conn)
        if parks:
            # Before any await: a turn finishing from here on delivers to the store.
            self._leaving[conn.id] = conn
            conn.inbox = []
            self._detach_turn(conn)
        await self._directory.unregister(conn.entry)
        log.info("ws_disconnected", extra={"connection_id": conn.id, "reason": reason})
        if parks and await self._park(conn):
            return
        effects = s.on_disconnect(conn.state)
        conn.state = s.IDLE
        for effect in effects:
            await self._execute(conn, effect, None)

    def _parks(self, conn: Connection) -> bool:
        """Whether the session of a connection that goes away waits for its client."""
        return (
            self._parking is not None
            and conn.session_key is not None
            and conn.state.session_id is not None
            and (not self._draining or self._limits.restart_parks)
        )

    def _detach_turn(self, conn: Connection) -> None:
        if conn.turn is not None and not conn.turn.done() and conn.session_key is not None:
            conn.detached = True
            self._detached[conn.session_key] = conn

    async def _park(self, conn: Connection) -> bool:
        """Park the session of a connection that went away. False if it could not be parked
        (the store is unreachable): then it is ended, as without resumable sessions."""
        assert self._parking is not None  # noqa: S101  # parks only with a store
        assert conn.session_key is not None  # noqa: S101  # and a session held in it
        key = conn.session_key
        self._stop_watchdog(conn)  # a remote turn delivers to the store from now on
        if conn.state.phase is s.Phase.RECORDING:
            self._drop_utterance(conn)  # the client records again
        try:
            parked = await self._parking.park(
                key, conn.id, pk.parked_phase(conn.state), self._credentials.claims_of(conn.token)
            )
        except ParkingUnavailable:
            log.warning("session_park_failed", extra={"connection_id": conn.id})
            self._undetach(conn)
            return False
        finally:
            self._leaving.pop(conn.id, None)
            late, conn.inbox = conn.inbox or [], None
        if parked:
            self._metrics.session_parking("parked")
            log.info(
                "session_parked",
                extra={"connection_id": conn.id, "session_id": conn.state.session_id},
            )
        # else: the session is no longer this connection's (taken over, ended, lapsed).
        for item in late:  # forwarded to it while it was being parked: they follow the session
            with contextlib.suppress(ParkingUnavailable):
                await self._parking.keep(*item)
        return True

    def _undetach(self, conn: Connection) -> None:
        conn.detached = False
        if conn.session_key is not None and self._detached.get(conn.session_key) is conn:
            del self._detached[conn.session_key]

    async def _refresh(self, conn: Connection, token: str) -> None:
        verdict = self._auth.refresh(conn.principal.user_id, token, self._clock.now())
        if isinstance(verdict, str):
            log.info("ws_refresh_refused", extra={"connection_id": conn.id})
            await conn.channel.send(p.error(verdict))
            return
        conn.principal = verdict
        conn.token = token  # the bearer of every later backend call
        conn.warned = False
        conn.expired = False
        self._watch_expiry(conn)
        await conn.channel.send(p.Refreshed(p.ExpiryPayload(int(verdict.expires_at))))

    def _watch_expiry(self, conn: Connection) -> None:
        """When its token needs attention: a warning, then the close (per token)."""
        expires_at = conn.principal.expires_at
        warning = self._limits.token_expiry_warning
        if warning > 0:
            self._expiry.schedule(expires_at - warning, DueItem(conn.id, Due.WARN, expires_at))
        self._expiry.schedule(
            self._auth.expiry_due(expires_at), DueItem(conn.id, Due.EXPIRE, expires_at)
        )

    def _still_due(self, item: DueItem) -> bool:
        conn = self._live.get(item.connection_id)
        return conn is not None and conn.principal.expires_at == item.expires_at

    async def expire_tokens(self) -> int:
        """Warn connections whose token expires within TOKEN_EXPIRY_WARNING (once per token)
        and close every connection whose token has expired (4003). Returns how many closed."""
        now = self._clock.now()
        closed = 0
        for item in self._expiry.due(now):
            if not self._still_due(item):
                continue  # gone, or refreshed since: this entry is for an old token
            conn = self._live[item.connection_id]
            if not self._auth.has_expired(item.expires_at, now):
                if item.kind is Due.EXPIRE:  # due by the clock, not yet by the leeway
                    self._expiry.schedule(now + 1.0, item)
                elif not conn.warned:
                    conn.warned = True
                    await conn.channel.send(p.TokenExpiring(p.ExpiryPayload(int(item.expires_at))))
                continue
            if item.kind is Due.EXPIRE:
                if conn.turn is not None and not conn.turn.done():
                    conn.expired = True  # the reply first (the turn is bounded by its deadline)
                    continue
                await self._close_expired(conn)
                closed += 1
        return closed

    async def _close_expired(self, conn: Connection) -> None:
        await conn.channel.close(CloseCode.TOKEN_EXPIRED, "Token expired")
        await self.disconnect(conn, "token_expired")

    def _restarts(self) -> bool:
        """Whether a shutdown parks sessions for another instance (Redis and a grace)."""
        return self._parking is not None and self._limits.restart_parks

    def _drain_close(self) -> tuple[CloseCode, str]:
        if self._restarts():
            return CloseCode.SERVICE_RESTART, RESTART_REASON
        return CloseCode.GOING_AWAY, SHUTDOWN_REASON

    async def drain(self) -> None:
        """Refuse new connections and close every open one. With resumable sessions on
        Redis: 1012, sessions parked for another instance, turns in flight given
        ``shutdown_turn_wait`` to finish and park their replies. Otherwise: 1001 and every
        session ended. Then a last attempt at every end call still being retried."""
        self._draining = True
        await asyncio.gather(*(self._shut(conn) for conn in list(self._live.values())))
        await self._finish_detached_turns(
            self._limits.shutdown_turn_wait if self._restarts() else 0.0
        )
        if self._parking is not None:
            left = await self._parking.leave()  # sessions nobody can resume once we are gone
            await asyncio.gather(*(self._end_at_backend(r.claims, r.session_id) for r in left))
        await self._cleanup.close()

    async def _finish_detached_turns(self, wait: float) -> None:
        """Let turns of parked sessions finish within ``wait``; the rest are cancelled and
        their clients told, when they resume, that the reply was lost."""
        turns = {c.turn: c for c in self._detached.values() if c.turn is not None}
        if turns and wait > 0:
            await asyncio.wait(turns, timeout=wait)
        for turn, conn in turns.items():
            if turn.done():
                continue
            turn.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await turn
            if self._restarts():
                await self._keep_outcome(conn, s.TurnFailed(LOST_REPLY))

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
        code, reason = self._drain_close()
        if self._restarts():
            # Parked before the client hears 1012, so its resume (anywhere) finds the session.
            await self.disconnect(conn, "server_restart")
            await conn.channel.close(code, reason)
            return
        await conn.channel.close(code, reason)
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
                self._metrics.audio_received(len(frame))
                if conn.upload is not None:
                    await self._write(conn, conn.upload, frame)
                else:
                    conn.chunks.append(frame)
            case s.StartUtterance():
                self._drop_utterance(conn)
                session_id = conn.state.session_id
                if self._limits.stream_uploads and session_id is not None:
                    conn.upload = self._backend.open_upload(
                        conn.token, session_id, conn.state.audio_format
                    )
            case s.DropUtterance():
                self._drop_utterance(conn)
            case s.CreateSession(profile_id=profile_id, topic=topic):
                await self._create_session(conn, profile_id, topic)
            case s.EndSession(session_id=session_id):
                await self._end_session(conn, session_id)
            case s.SubmitUtterance(session_id=session_id, audio_format=audio_format):
                upload, conn.upload = conn.upload, None
                if upload is not None:
                    conn.turn = asyncio.create_task(self._run_turn(conn, upload.finish))
                    # However the turn ends (a reply, a deadline, end_session, a cancel before
                    # it ran), the upload is over: aborting a finished one changes nothing.
                    conn.turn.add_done_callback(lambda _: upload.abort())
                else:
                    utterance = Utterance(conn.chunks, audio_format)
                    conn.chunks = []
                    token = conn.token
                    conn.turn = asyncio.create_task(
                        self._run_turn(
                            conn,
                            lambda: self._backend.submit_utterance(token, session_id, utterance),
                        )
                    )
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
                    self._cleanup.adopt(call, self._credentials.claims_of(conn.token), started)
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
        if self._parking is not None and conn.state.phase is s.Phase.IDLE:
            await self._hold(
                conn,
                pk.SessionRecord(
                    uuid.uuid4().hex,
                    conn.principal.user_id,
                    created.id,
                    profile_id,
                    created.topic,
                    self._credentials.claims_of(conn.token),
                ),
            )
        await self._apply(conn, s.SessionCreated(created.id, profile_id, created.topic))

    async def _hold(self, conn: Connection, record: pk.SessionRecord) -> None:
        """Make the new session resumable with this connection's resume token."""
        assert self._parking is not None  # noqa: S101  # only called with a store
        try:
            await self._parking.hold(conn.resume_token, record, conn.id)
        except ParkingUnavailable:
            log.warning("session_hold_failed", extra={"connection_id": conn.id})
            return  # it works, but a drop ends it
        conn.session_key = record.key

    async def _end_session(self, conn: Connection, session_id: str) -> None:
        key, conn.session_key = conn.session_key, None
        if key is not None and self._parking is not None:
            with contextlib.suppress(ParkingUnavailable):  # then its token lapses on its own
                await self._parking.forget(key)
        # The client's own token while it is good for a while yet; else (a 4003 close) a
        # bearer made from its claims.
        fresh = conn.principal.expires_at - self._clock.now() > OWN_TOKEN_MARGIN
        await self._end_at_backend(
            self._credentials.claims_of(conn.token), session_id, conn.token if fresh else None
        )
        if not conn.closed:
            await conn.channel.send(p.SessionEnded(p.SessionEndedPayload(session_id)))

    async def _end_at_backend(self, claims: str, session_id: str, token: str | None = None) -> None:
        """End a session at the backend; a failed call is retried in the background."""
        await self._cleanup.end_now(claims, session_id, token)

    async def _write(self, conn: Connection, upload: UtteranceUpload, frame: bytes) -> None:
        """A frame into the streamed upload; while the backend reads slower than the learner
        speaks this waits, and this connection is not read meanwhile (back-pressure)."""
        try:
            # Room in the window (the usual case): no wait, so no deadline to arm (a timer
            # per frame was ~5% of a streamed frame's CPU).
            if not upload.offer(frame):
                await self._on_time(upload.write(frame))
        except BackendError as exc:
            self._metrics.backend_error(exc.kind)
            log.warning(
                "voice_upload_failed",
                extra={"connection_id": conn.id, "kind": exc.kind.value, "status": exc.status},
            )
            await self._apply(
                conn,
                s.UploadFailed(
                    f"Could not send the utterance to the backend: {exc.detail} The rest of "
                    "this recording is ignored; send stop_recording, then record again."
                ),
            )

    @staticmethod
    def _drop_utterance(conn: Connection) -> None:
        conn.chunks = []
        upload, conn.upload = conn.upload, None
        if upload is not None:
            upload.abort()  # the backend sees a broken request, never a turn

    async def _cancel_turn(self, conn: Connection) -> None:
        self._stop_watchdog(conn)
        turn, conn.turn = conn.turn, None
        if turn is None or turn.done() or turn is asyncio.current_task():
            return
        turn.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await turn

    async def _run_encoded_turn(self, conn: Connection, effect: s.SubmitEncodedAudio) -> None:
        audio = effect.audio
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
        utterance = Utterance((audio,), effect.audio_format)
        await self._run_turn(
            conn,
            lambda: self._backend.submit_utterance(conn.token, effect.session_id, utterance),
        )

    async def _run_turn(self, conn: Connection, call: Callable[[], Awaitable[TurnReply]]) -> None:
        started = self._clock.monotonic()
        event: s.TurnSucceeded | s.TurnFailed
        try:
            reply = await self._on_time(call())
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
        if conn.detached:
            self._undetach(conn)
            await self._keep_outcome(conn, event)
            return
        await self._apply(conn, event)
        if conn.expired and not conn.closed and self._still_expired(conn):
            await self._close_expired(conn)

    def _still_expired(self, conn: Connection) -> bool:
        """Its token expired during the turn and no refresh has replaced it since."""
        return self._auth.has_expired(conn.principal.expires_at, self._clock.now())

    async def _keep_outcome(self, conn: Connection, event: s.TurnSucceeded | s.TurnFailed) -> None:
        """A detached turn's messages go to the parking store, which keeps or forwards them."""
        decision = s.decide(conn.state, event, self._session_limits)
        conn.state = decision.state
        messages = [p.encode_kept(e.message) for e in decision.effects if isinstance(e, s.Send)]
        if self._parking is None or conn.session_key is None:
            return
        try:
            await self._parking.keep(conn.session_key, messages, True)
        except ParkingUnavailable:
            log.warning("turn_reply_lost", extra={"session_id": conn.state.session_id})
