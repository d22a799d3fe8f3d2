"""Ports: what the domain needs from the outside world, as ``typing.Protocol`` classes.

Adapters implement these explicitly (they subclass the Protocol) so mypy checks the fit.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Protocol

import msgspec

from kalami_gateway.domain.protocol import AudioFormat, GrammarCorrection, ServerMessage


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

    async def health(self) -> BackendHealth: ...


class ClientChannel(Protocol):
    """One client's WebSocket, as the domain sees it."""

    async def send(self, message: ServerMessage) -> None:
        """Send a message; a channel that is gone ignores it."""
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


class Metrics(Protocol):
    """What the domain reports for monitoring."""

    def message_received(self, message_type: str) -> None: ...

    def audio_received(self, size: int) -> None: ...

    def turn_finished(self, outcome: str, seconds: float) -> None: ...

    def backend_error(self, kind: BackendErrorKind) -> None: ...

    def connection_closed(self, reason: str) -> None: ...


class ConnectionEntry(msgspec.Struct, frozen=True):
    """A live WebSocket connection as the registry knows it."""

    connection_id: str
    user_id: str
    token_expires_at: float
    connected_at: float


class RegistryStats(msgspec.Struct, frozen=True):
    connections: int
    users: int
    accepted_total: int
    peak_connections: int


class ConnectionRegistry(Protocol):
    """Which connections are open, and whose. In memory today; a shared store can replace it."""

    def add(self, entry: ConnectionEntry) -> None: ...

    def remove(self, connection_id: str) -> ConnectionEntry | None:
        """Forget a connection; removing one that is gone returns None."""
        ...

    def get(self, connection_id: str) -> ConnectionEntry | None: ...

    def for_user(self, user_id: str) -> list[ConnectionEntry]: ...

    def entries(self) -> list[ConnectionEntry]: ...

    def stats(self) -> RegistryStats: ...
