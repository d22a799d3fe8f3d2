"""Ports: what the domain needs from the outside world, as ``typing.Protocol`` classes.

Adapters implement these explicitly (they subclass the Protocol) so mypy checks the fit.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import msgspec

from kalami_gateway.domain.parking import Claim, Holder, ParkedPhase, SessionRecord
from kalami_gateway.domain.protocol import AudioFormat, GrammarCorrection, Outbound


class BackendHealth(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNREACHABLE = "unreachable"


class BackendErrorKind(enum.Enum):
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    REJECTED = "rejected"  # the backend answered with an error status
    INVALID_REPLY = "invalid_reply"  # the backend answered 2xx with a body we cannot read


class BackendError(Exception):
    """A backend call that did not succeed; ``detail`` is safe to show the client."""

    def __init__(self, kind: BackendErrorKind, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = status


class CreatedSession(msgspec.Struct, frozen=True):
    id: str
    topic: str | None


class Utterance(msgspec.Struct, frozen=True):
    """One recorded utterance: its frames in arrival order, and their container format."""

    chunks: Sequence[bytes]
    audio_format: AudioFormat

    @property
    def size(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)


class TurnReply(msgspec.Struct, frozen=True):
    user_text: str
    assistant_text: str
    assistant_audio_base64: str | None
    corrections: list[GrammarCorrection]
    vocabulary_introduced: list[str]


class UtteranceUpload(Protocol):
    """One utterance on its way to the backend while the learner is still speaking: the body
    of ``POST /conversations/sessions/{id}/audio``, written frame by frame. At most a small
    window of audio waits in the gateway; past it ``write`` waits (back-pressure)."""

    def offer(self, chunk: bytes) -> bool:
        """Add a frame to the body if the window has room for it now (True), without waiting;
        False: ``write`` it instead. Raises ``BackendError`` if the upload has failed."""
        ...

    async def write(self, chunk: bytes) -> None:
        """Add a frame to the body; waits while the backend reads slower than the learner
        speaks. Raises ``BackendError`` if the upload has failed."""
        ...

    async def finish(self) -> TurnReply:
        """End the body and wait for the backend's reply (raises ``BackendError``)."""
        ...

    def abort(self) -> None:
        """Break the upload off: the backend sees a broken request, never a turn."""
        ...


class Backend(Protocol):
    """The Kalami FastAPI backend. Every call but ``health`` acts as the learner (``token``).

    Failures raise ``BackendError``.
    """

    async def create_session(
        self, token: str, profile_id: str, topic: str | None
    ) -> CreatedSession: ...

    async def end_session(self, token: str, session_id: str) -> None: ...

    async def submit_utterance(
        self, token: str, session_id: str, utterance: Utterance
    ) -> TurnReply: ...

    def open_upload(
        self, token: str, session_id: str, audio_format: AudioFormat
    ) -> UtteranceUpload:
        """Start streaming an utterance to the backend (the same request ``submit_utterance``
        makes, its body written as the audio arrives)."""
        ...

    async def health(self) -> BackendHealth: ...


class ClientChannel(Protocol):
    """One client's WebSocket, as the domain sees it."""

    async def send(self, message: Outbound) -> None:
        """Send a message; a channel that is gone ignores it. Each goes as one text frame, but
        ``AudioFrames`` (reply audio in binary): its ``start()`` as a text frame, then each of
        its ``frames()`` as a binary frame, with no other message between them."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close with a code and reason; closing twice is harmless."""
        ...


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time, seconds since the epoch (for token expiry)."""
        ...

    def monotonic(self) -> float:
        """A clock for durations."""
        ...


class InvalidTokenError(Exception):
    """The token is not one we issued: malformed, wrong signature, wrong algorithm."""


class TokenDecoder(Protocol):
    def decode(self, token: str) -> Mapping[str, object]:
        """Verify the token's signature and algorithm; return its claims.

        Raises ``InvalidTokenError``. Claim values are checked by the auth policy, not here.
        """
        ...


class SessionCredentials(Protocol):
    """How the gateway ends a learner's session after the learner's token may have lapsed (a
    session parked past its token's expiry, an end call retried for minutes).

    What is kept for that is the token's claims, never the token itself (a store holding them
    holds nothing that works); each end call gets a bearer made from them at that moment."""

    def claims_of(self, token: str) -> str:
        """The claims of an accepted token, as kept to end its sessions later."""
        ...

    def bearer(self, claims: str, now: float) -> str:
        """A bearer for one backend call on behalf of the learner with these claims, valid
        from ``now`` for a short while. ``ValueError`` if the claims are unusable (a record
        written by an older release, say)."""
        ...


class Metrics(Protocol):
    """What the domain reports for monitoring."""

    def message_received(self, message_type: str) -> None: ...

    def audio_received(self, size: int) -> None: ...

    def turn_finished(self, outcome: str, seconds: float) -> None: ...

    def backend_error(self, kind: BackendErrorKind) -> None: ...

    def connection_closed(self, reason: str) -> None: ...

    def session_cleanup(self, outcome: str) -> None:
        """A background end call: ``retry`` (another attempt), ``ended`` (a retry or an
        orphaned create's end succeeded), ``gave_up`` (the retry window ran out),
        ``refused`` (the backend refused the credential: 401/403, final)."""
        ...

    def session_parking(self, event: str) -> None:
        """A resumable session was ``parked``, ``resumed`` or ``expired`` (ended after its
        grace)."""
        ...


class ConnectionEntry(msgspec.Struct, frozen=True):
    """A live WebSocket connection as the directory knows it."""

    connection_id: str
    user_id: str
    token_expires_at: float
    connected_at: float


class DirectoryCounts(msgspec.Struct, frozen=True):
    """The whole cluster: live instances, their open connections, distinct users."""

    instances: int
    connections: int
    users: int


class ConnectionDirectory(Protocol):
    """Which connections are open across every instance of the gateway, and whose.

    Every call is idempotent (registering a registered connection, or unregistering a gone
    one, changes nothing). An instance holds its entries under a lease that ``renew``
    extends: an instance that stops renewing (killed, cut off) drops out with all of its
    entries. Implemented in memory (one process) and on Redis (a cluster); both pass one
    contract test suite. An implementation that loses its store keeps serving from what this
    instance knows, and puts its entries back when the store returns.
    """

    async def register(self, entry: ConnectionEntry, cap: int) -> bool:
        """Add a connection of this instance, unless its user already has ``cap`` open
        across the directory (``cap`` 0: no cap). True if it is registered (now or before).
        The check and the add are one atomic step: no race lets a user past the cap."""
        ...

    async def unregister(self, entry: ConnectionEntry) -> None: ...

    async def counts(self) -> DirectoryCounts: ...

    async def connections_of(self, user_id: str) -> frozenset[str]:
        """The ids of the user's open connections, on every instance."""
        ...

    async def renew(self) -> None:
        """Extend this instance's lease (and put its entries back if the store lost them)."""
        ...

    def reachable(self) -> bool:
        """Whether the shared store answered last time it was asked (always, in memory)."""
        ...

    async def leave(self) -> None:
        """Take this instance and its entries out of the directory (a clean shutdown)."""
        ...


class PushUnavailable(Exception):
    """A push could not be published (the shared store is unreachable)."""


class PushBus(Protocol):
    """Delivers a push to every open connection of a user, on whichever instance it is."""

    async def publish(self, user_id: str, payload: bytes) -> int:
        """Publish ``payload`` (a JSON object, encoded) to the user's connections; returns how
        many the directory held when it was published. Raises PushUnavailable."""
        ...

    async def run(self, deliver: Callable[[str, bytes], Awaitable[None]]) -> None:
        """Hand every push published anywhere to ``deliver(user_id, payload)``, until
        cancelled (surviving the loss of the shared store)."""
        ...


class ParkingUnavailable(Exception):
    """The session store cannot be reached (Redis is away)."""


class ParkingEvents(Protocol):
    """What a parking store hands to the instance that holds a connection."""

    async def forwarded(
        self, connection_id: str, key: str, messages: Sequence[bytes], turn_done: bool
    ) -> None:
        """Messages of a turn that ran elsewhere (where the session used to be), for the
        connection that holds the session now; ``turn_done``: the turn is over."""
        ...

    async def release(self, connection_id: str, key: str) -> None:
        """Another connection resumes this connection's session ``key``: close it (4007)
        and park the session."""
        ...


class SessionParking(Protocol):
    """Open sessions that outlive their connection: held by a connection, parked while its
    client is away, claimed by the client's next connection (on any instance), ended once
    when the grace lapses. Implemented in memory (one process) and on Redis (a cluster); both
    pass one contract suite. Failures to reach the store raise ``ParkingUnavailable``."""

    async def hold(self, resume_token: str, record: SessionRecord, connection_id: str) -> None:
        """A connection of this instance opened ``record``: ``resume_token`` now resumes it."""
        ...

    async def park(
        self, key: str, connection_id: str, phase: ParkedPhase, claims: str | None
    ) -> bool:
        """The holder went away: wait for a resume until the grace lapses (``claims``: the
        learner's latest, to end the session with; None keeps the held ones). False if the
        session is not this connection's any more (taken over, ended, lapsed)."""
        ...

    async def keep(self, key: str, messages: Sequence[bytes], turn_done: bool) -> None:
        """A turn's messages (encoded): kept (bounded) while the session is parked, forwarded
        to the connection holding it otherwise, dropped if it is gone."""
        ...

    async def claim(
        self, resume_token: str, user_id: str, new_resume_token: str, connection_id: str
    ) -> Claim:
        """Take a parked session for a new connection of this instance (single use of the
        token; ``new_resume_token`` resumes it next). Another user's token changes nothing."""
        ...

    async def ask_release(self, holder: Holder, key: str) -> None:
        """Ask the instance of a connection still holding a session to let it go."""
        ...

    async def forget(self, key: str) -> None:
        """The client ended the session: it cannot be resumed any more."""
        ...

    async def take_lapsed(self) -> list[SessionRecord]:
        """Parked sessions whose grace has lapsed, each handed to exactly one caller across
        the cluster (who ends it at the backend)."""
        ...

    async def parked(self) -> int:
        """How many sessions are parked (cluster-wide with Redis)."""
        ...

    async def leave(self) -> list[SessionRecord]:
        """At shutdown: the sessions that nobody can resume once this instance is gone (all
        of them in memory; none on Redis, where another instance resumes them)."""
        ...

    async def run(self, events: ParkingEvents) -> None:
        """Hand forwarded messages and release requests for this instance's connections to
        ``events``, until cancelled."""
        ...


TraceValue = str | int | bool


class TraceSpan(Protocol):
    """One span of a trace, as the application sees it (``Tracing.start`` makes them)."""

    def set_attribute(self, key: str, value: TraceValue) -> None: ...

    def fail(self, description: str) -> None:
        """Mark the span's work as failed (its status ERROR), saying why."""
        ...

    def end(self) -> None:
        """End the span now (a second call changes nothing)."""
        ...


class Tracing(Protocol):
    """Traces (OpenTelemetry's, in ``adapters/tracing``). The application holds a
    ``Tracing | None``: None when tracing is off, so that nothing is made or called on a hot
    path; it asks once per session and per turn, never per frame."""

    def now(self) -> int:
        """A timestamp to start a span at later (``start_time``), in ns since the epoch."""
        ...

    def start(
        self,
        name: str,
        *,
        parent: TraceSpan | None = None,
        owner: str | None = None,
        start_time: int | None = None,
        attributes: Mapping[str, TraceValue] | None = None,
    ) -> TraceSpan:
        """A new span, child of ``parent`` (None: of whatever span is current, else a new
        trace). ``owner`` (a connection id) files it to be found by ``owned`` while it is
        open, and ended with its owner if still open then."""
        ...

    def owned(self, owner: str, name: str) -> TraceSpan | None:
        """The open span named ``name`` filed under ``owner``, if any."""
        ...

    def take(self, owner: str, name: str) -> TraceSpan | None:
        """The same, taken out of ``owner``'s file (still open: the taker ends it)."""
        ...

    def current(self, span: TraceSpan) -> AbstractContextManager[None]:
        """While entered, ``span`` is the current one: the backend calls made meanwhile are
        its children and carry its traceparent."""
        ...
