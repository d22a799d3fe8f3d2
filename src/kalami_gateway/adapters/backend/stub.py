"""An in-process backend: sessions and deterministic tutor turns, with no network at all.

``BACKEND_MODE=stub`` runs the gateway without the FastAPI backend (development, staging,
benchmarks). Its replies are deterministic so tests can assert on them: the transcription
states how many bytes of which format it heard.
"""

from __future__ import annotations

import base64
import itertools
from typing import Final

from kalami_gateway.domain.ports import (
    Backend,
    BackendError,
    BackendErrorKind,
    BackendHealth,
    CreatedSession,
    TurnReply,
    Utterance,
    UtteranceUpload,
)
from kalami_gateway.domain.protocol import AudioFormat, GrammarCorrection

# Ten frames of MPEG-1 Layer III silence (128 kbit/s, 44.1 kHz): a real, playable reply.
_MP3_FRAME: Final = b"\xff\xfb\x90\x64" + bytes(413)
REPLY_AUDIO_BASE64: Final = base64.b64encode(_MP3_FRAME * 10).decode()
CORRECTION: Final[GrammarCorrection] = {
    "original": "I goed to the market",
    "corrected": "I went to the market",
    "explanation": "'go' is irregular: its past tense is 'went'.",
    "category": "grammar",
}


class StubBackend(Backend):
    """Keeps its sessions in memory; each utterance gets a tutor reply that describes it."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._open: set[str] = set()

    @property
    def open_sessions(self) -> frozenset[str]:
        return frozenset(self._open)

    async def create_session(
        self, token: str, profile_id: str, topic: str | None
    ) -> CreatedSession:
        session_id = f"stub-{next(self._ids)}"
        self._open.add(session_id)
        return CreatedSession(id=session_id, topic=topic)

    async def end_session(self, token: str, session_id: str) -> None:
        if session_id not in self._open:
            raise BackendError(BackendErrorKind.REJECTED, "the backend answered 404.", status=404)
        self._open.discard(session_id)

    async def submit_utterance(
        self, token: str, session_id: str, utterance: Utterance
    ) -> TurnReply:
        return self.reply(session_id, utterance.size, utterance.audio_format)

    def open_upload(
        self, token: str, session_id: str, audio_format: AudioFormat
    ) -> UtteranceUpload:
        return _CountingUpload(self, session_id, audio_format)

    def reply(self, session_id: str, size: int, audio_format: AudioFormat) -> TurnReply:
        """The tutor's answer to ``size`` bytes of audio (404 for a session not open)."""
        if session_id not in self._open:
            raise BackendError(BackendErrorKind.REJECTED, "the backend answered 404.", status=404)
        return TurnReply(
            user_text=f"I heard {size} bytes of {audio_format} audio.",
            assistant_text="Well done! Tell me more: what did you do at the market?",
            assistant_audio_base64=REPLY_AUDIO_BASE64,
            corrections=[CORRECTION],
            vocabulary_introduced=["market"],
        )

    async def health(self) -> BackendHealth:
        return BackendHealth.HEALTHY


class _CountingUpload(UtteranceUpload):
    """Consumes the stream as the real backend would: it counts the bytes as they come and
    keeps none of them."""

    def __init__(self, backend: StubBackend, session_id: str, audio_format: AudioFormat) -> None:
        self._backend = backend
        self._session_id = session_id
        self._format: AudioFormat = audio_format
        self._size = 0
        self._aborted = False

    def offer(self, chunk: bytes) -> bool:
        if self._aborted:
            raise BackendError(BackendErrorKind.UNREACHABLE, "the upload was aborted.")
        self._size += len(chunk)
        return True

    async def write(self, chunk: bytes) -> None:
        self.offer(chunk)

    async def finish(self) -> TurnReply:
        if self._aborted:
            raise BackendError(BackendErrorKind.UNREACHABLE, "the upload was aborted.")
        return self._backend.reply(self._session_id, self._size, self._format)

    def abort(self) -> None:
        self._aborted = True
