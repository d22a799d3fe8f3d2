"""In-memory fakes for the domain's ports: they record what they were asked."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from kalami_gateway.domain.ports import (
    Backend,
    BackendError,
    BackendErrorKind,
    BackendHealth,
    ClientChannel,
    Clock,
    CreatedSession,
    InvalidTokenError,
    Metrics,
    SessionCredentials,
    TokenDecoder,
    TurnReply,
    Utterance,
    UtteranceUpload,
)
from kalami_gateway.domain.protocol import (
    AudioFormat,
    AudioFrames,
    Outbound,
    encode_server_message,
)


class FakeClock(Clock):
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.wall = now
        self.mono = 0.0

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


class FakeCredentials(SessionCredentials):
    """Claims are the token in brackets; a bearer names the claims and the moment it was made."""

    def claims_of(self, token: str) -> str:
        return f"claims({token})"

    def bearer(self, claims: str, now: float) -> str:
        return f"bearer[{claims}]@{now:.0f}"


class FakeChannel(ClientChannel):
    def __init__(self) -> None:
        self.sent: list[Outbound] = []
        self.closed_with: tuple[int, str] | None = None

    async def send(self, message: Outbound) -> None:
        if self.closed_with is None:
            self.sent.append(message)

    async def close(self, code: int, reason: str) -> None:
        if self.closed_with is None:
            self.closed_with = (code, reason)

    def wire(self) -> list[str]:
        """What the client saw as text frames (of reply audio in binary, its ``audio_start``)."""
        return [
            encode_server_message(m.start() if isinstance(m, AudioFrames) else m) for m in self.sent
        ]

    def types(self) -> list[str]:
        return [type(m).__struct_config__.tag for m in self.sent]  # type: ignore[misc]


class FakeBackend(Backend):
    """Sessions in memory; a turn waits on ``release`` when ``hold_turns`` is set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.utterances: list[tuple[str, bytes, str]] = []
        self.fail_next: BackendError | None = None
        self.fail_end = False
        self.end_failures: list[BackendError] = []  # the next end calls fail with these
        self.hold_creates: asyncio.Event | None = None  # a create waits for it when set
        self.hold_turns = False
        self.release = asyncio.Event()
        self.turn_started = asyncio.Event()
        self.health_verdict = BackendHealth.HEALTHY
        self.uploads: list[FakeUpload] = []
        self.upload_fail_at: int | None = None  # uploads fail from this write on
        self.upload_room: asyncio.Event | None = None  # writes wait for it when set
        self.reply_audio_base64: str | None = "AAAA"  # each turn's reply audio
        self._next = 0

    def _maybe_fail(self) -> None:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error

    async def create_session(
        self, token: str, profile_id: str, topic: str | None
    ) -> CreatedSession:
        self.calls.append(("create", token, profile_id, str(topic)))
        if self.hold_creates is not None:
            await self.hold_creates.wait()
        self._maybe_fail()
        self._next += 1
        return CreatedSession(id=f"s{self._next}", topic=topic)

    async def end_session(self, token: str, session_id: str) -> None:
        self.calls.append(("end", token, session_id))
        if self.end_failures:
            raise self.end_failures.pop(0)
        if self.fail_end:
            raise BackendError(BackendErrorKind.UNREACHABLE, "the backend is unavailable.")

    async def submit_utterance(
        self, token: str, session_id: str, utterance: Utterance
    ) -> TurnReply:
        audio = b"".join(utterance.chunks)
        self.calls.append(("turn", token, session_id))
        self.utterances.append((session_id, audio, utterance.audio_format))
        self.turn_started.set()
        if self.hold_turns:
            await self.release.wait()
        self._maybe_fail()
        return TurnReply(
            user_text=f"heard {len(audio)} bytes",
            assistant_text="Nice!",
            assistant_audio_base64=self.reply_audio_base64,
            corrections=[{"original": "a", "corrected": "b", "explanation": "c"}],
            vocabulary_introduced=["word"],
        )

    def open_upload(
        self, token: str, session_id: str, audio_format: AudioFormat
    ) -> UtteranceUpload:
        self.calls.append(("upload", token, session_id))
        upload = FakeUpload(self, token, session_id, audio_format)
        self.uploads.append(upload)
        return upload

    async def health(self) -> BackendHealth:
        return self.health_verdict


class FakeUpload(UtteranceUpload):
    """Records what was written; fails from write number ``fail_at`` when the backend's
    ``upload_fail_at`` says so; ``finish`` answers like ``submit_utterance``."""

    def __init__(
        self, backend: FakeBackend, token: str, session_id: str, audio_format: AudioFormat
    ) -> None:
        self.backend = backend
        self.token = token
        self.session_id = session_id
        self.audio_format: AudioFormat = audio_format
        self.chunks: list[bytes] = []
        self.aborted = False
        self.finished = False
        self.writes = 0

    def offer(self, chunk: bytes) -> bool:
        """Taken at once unless the backend is slow or failing (then ``write`` decides)."""
        if self.backend.upload_room is not None or self.backend.upload_fail_at is not None:
            return False
        self.writes += 1
        self.chunks.append(chunk)
        return True

    async def write(self, chunk: bytes) -> None:
        self.writes += 1
        fail_at = self.backend.upload_fail_at
        if fail_at is not None and self.writes >= fail_at:
            raise BackendError(BackendErrorKind.UNREACHABLE, "the backend is unavailable.")
        if self.backend.upload_room is not None:
            await self.backend.upload_room.wait()  # a backend reading slowly
        self.chunks.append(chunk)

    async def finish(self) -> TurnReply:
        self.finished = True
        return await self.backend.submit_utterance(
            self.token, self.session_id, Utterance(self.chunks, self.audio_format)
        )

    def abort(self) -> None:
        self.aborted = True


class FakeMetrics(Metrics):
    def __init__(self) -> None:
        self.messages: list[str] = []
        self.audio_bytes = 0
        self.turns: list[str] = []
        self.backend_errors: list[BackendErrorKind] = []
        self.closed: list[str] = []
        self.cleanup: list[str] = []
        self.parking: list[str] = []

    def message_received(self, message_type: str) -> None:
        self.messages.append(message_type)

    def audio_received(self, size: int) -> None:
        self.audio_bytes += size

    def turn_finished(self, outcome: str, seconds: float) -> None:
        self.turns.append(outcome)

    def backend_error(self, kind: BackendErrorKind) -> None:
        self.backend_errors.append(kind)

    def connection_closed(self, reason: str) -> None:
        self.closed.append(reason)

    def session_cleanup(self, outcome: str) -> None:
        self.cleanup.append(outcome)

    def session_parking(self, event: str) -> None:
        self.parking.append(event)


class FakeDecoder(TokenDecoder):
    """Tokens are names of claim sets registered with ``issue``."""

    def __init__(self) -> None:
        self.tokens: dict[str, Mapping[str, object]] = {}

    def issue(self, token: str, **claims: object) -> str:
        self.tokens[token] = claims
        return token

    def decode(self, token: str) -> Mapping[str, object]:
        if token not in self.tokens:
            raise InvalidTokenError("unknown token")
        return self.tokens[token]
