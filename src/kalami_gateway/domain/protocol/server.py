"""The messages the gateway sends: encoded as text frames, and kept as bytes for a parked
session (and forwarded between instances) to be read back as they were produced.

``ServerMessage`` is every text frame. What the gateway sends is ``Outbound``: those, and
``AudioFrames``, the tutor's spoken reply for a client that asked for it in binary
(``start_session``'s ``replyAudio``), which a channel sends as an ``audio_start`` text frame
and then the audio in binary frames of at most ``AUDIO_FRAME_BYTES``."""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from kalami_gateway.domain.protocol.client import ClientMessageType, EmptyPayload
from kalami_gateway.domain.protocol.errors import Problem


class ConnectedPayload(msgspec.Struct, frozen=True, rename="camel"):
    connection_id: str
    expires_at: int  # the token's exp (unix seconds)
    resume_token: str  # reconnect with /ws?token=...&resume=<this> to carry the session on


class ExpiryPayload(msgspec.Struct, frozen=True, rename="camel"):
    expires_at: int


class SessionStartedPayload(msgspec.Struct, frozen=True, rename="camel"):
    id: str
    profile_id: str
    topic: str | None


class SessionResumedPayload(msgspec.Struct, frozen=True, rename="camel"):
    id: str
    profile_id: str
    topic: str | None
    state: Literal["active", "processing"]


class RecordingStartedPayload(msgspec.Struct, frozen=True):
    format: str


class AudioReceivedPayload(msgspec.Struct, frozen=True, rename="camel"):
    bytes: int
    total_bytes: int


class ProcessingPayload(msgspec.Struct, frozen=True):
    stage: str


class TranscriptionPayload(msgspec.Struct, frozen=True):
    text: str
    is_final: bool = True


# A grammar correction as the backend's LLM wrote it: a JSON object relayed with every key it
# has (usually ``original``, ``corrected``, ``explanation``; the app also reads ``category``).
GrammarCorrection = dict[str, Any]


class ResponsePayload(msgspec.Struct, frozen=True):
    text: str
    grammar_corrections: list[GrammarCorrection]
    vocabulary_introduced: list[str] = []


class AudioReplyPayload(msgspec.Struct, frozen=True):
    audio_base64: str
    format: str = "mp3"


# The largest binary frame of a reply's audio (``replyAudio: binary``): 64 KiB, a sixteenth
# of the 1 MiB iOS's URLSessionWebSocketTask takes by default (its maximumMessageSize); a
# 30-second reply (240 KB of 64 kbit/s mp3) is 4 frames. Each frame is one WebSocket message.
AUDIO_FRAME_BYTES: Final = 64 << 10


class AudioStartPayload(msgspec.Struct, frozen=True, rename="camel"):
    """Announces a reply's audio in binary frames: exactly ``frames`` binary frames follow,
    nothing else between them, each at most ``max_frame_bytes``; together they are ``bytes``
    bytes of ``format`` audio."""

    format: str
    bytes: int
    frames: int
    max_frame_bytes: int = AUDIO_FRAME_BYTES


class AudioFramesPayload(msgspec.Struct, frozen=True):
    audio: bytes  # kept (JSON) as base64, msgspec's encoding of bytes
    format: str = "mp3"


class SessionEndedPayload(msgspec.Struct, frozen=True):
    id: str


class HeartbeatReplyPayload(msgspec.Struct, frozen=True):
    pong: bool = True


class ErrorPayload(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """``message`` for a person (worded as it always was); ``code`` for a program (errors.py's
    closed list); ``inReplyTo``, the type of the client message it answers (absent when none
    did: a binary frame, a backend failure mid-recording, a resume, a lost turn); ``status``,
    the backend's HTTP status of a ``backend_rejected``; ``reason``, why a resume or refresh
    was refused. A field with nothing to say is left out, so an older client sees only new keys
    beside ``message``.

    ``code`` and ``inReplyTo`` are plain strings here, not the closed types ``error`` takes: a
    kept message read back (``decode_kept``) may come from another version of the gateway
    during a rolling upgrade, and a code or type this one does not know must not make it drop
    the message. For the same reason ``code`` may be absent (kept by a gateway before codes).
    """

    message: str
    code: str | None = None
    in_reply_to: str | None = None
    status: int | None = None
    reason: str | None = None


class _ServerMessage(msgspec.Struct, frozen=True, tag_field="type"):
    pass


class Connected(_ServerMessage, frozen=True, tag="connected"):
    payload: ConnectedPayload


class SessionStarted(_ServerMessage, frozen=True, tag="session_started"):
    payload: SessionStartedPayload


class SessionResumed(_ServerMessage, frozen=True, tag="session_resumed"):
    payload: SessionResumedPayload


class RecordingStarted(_ServerMessage, frozen=True, tag="recording_started"):
    payload: RecordingStartedPayload


class AudioReceived(_ServerMessage, frozen=True, tag="audio_received"):
    payload: AudioReceivedPayload


class Processing(_ServerMessage, frozen=True, tag="processing"):
    payload: ProcessingPayload


class Transcription(_ServerMessage, frozen=True, tag="transcription"):
    payload: TranscriptionPayload


class Response(_ServerMessage, frozen=True, tag="response"):
    payload: ResponsePayload


class AudioReply(_ServerMessage, frozen=True, tag="audio"):
    payload: AudioReplyPayload


class AudioStart(_ServerMessage, frozen=True, tag="audio_start"):
    payload: AudioStartPayload


class AudioFrames(msgspec.Struct, frozen=True, tag_field="type", tag="audio_frames"):
    """The tutor's spoken reply for a client that asked for it in binary: never sent as it
    is (so not a ``ServerMessage``, every one of which is a text frame). A channel sends
    ``start()`` (``audio_start``, a text frame), then each of ``frames()`` as a binary frame,
    with nothing else between them (``ports.ClientChannel``).

    This is its form in the state machine's decisions and as kept for a parked session or
    forwarded to another instance (``encode_kept``), so a reply kept while its client was away
    still comes in binary on the resumed connection. A gateway that does not know the tag (an
    older one, during a rolling upgrade) reads it back as nothing (``decode_kept``): that one
    reply's audio is lost, never sent in a form the client did not ask for.
    """

    payload: AudioFramesPayload

    def start(self) -> AudioStart:
        """The announcement of the frames."""
        size = len(self.payload.audio)
        return AudioStart(
            AudioStartPayload(self.payload.format, size, -(-size // AUDIO_FRAME_BYTES))
        )

    def frames(self) -> list[bytes]:
        """The audio cut into binary frames of at most ``AUDIO_FRAME_BYTES``, in order."""
        audio = self.payload.audio
        return [audio[i : i + AUDIO_FRAME_BYTES] for i in range(0, len(audio), AUDIO_FRAME_BYTES)]


class SessionEnded(_ServerMessage, frozen=True, tag="session_ended"):
    payload: SessionEndedPayload


class Pong(_ServerMessage, frozen=True, tag="pong"):
    payload: EmptyPayload = EmptyPayload()


class HeartbeatReply(_ServerMessage, frozen=True, tag="heartbeat"):
    payload: HeartbeatReplyPayload = HeartbeatReplyPayload()


class Error(_ServerMessage, frozen=True, tag="error"):
    payload: ErrorPayload


class Refreshed(_ServerMessage, frozen=True, tag="refreshed"):
    payload: ExpiryPayload


class TokenExpiring(_ServerMessage, frozen=True, tag="token_expiring"):
    payload: ExpiryPayload


class Push(_ServerMessage, frozen=True, tag="push"):
    """A message the backend pushed to the user (``POST /internal/push``): its payload is the
    JSON object the backend sent, passed through as it was encoded."""

    payload: msgspec.Raw


ServerMessage = (
    Connected
    | SessionStarted
    | SessionResumed
    | RecordingStarted
    | AudioReceived
    | Processing
    | Transcription
    | Response
    | AudioReply
    | AudioStart
    | SessionEnded
    | Pong
    | HeartbeatReply
    | Error
    | Push
    | Refreshed
    | TokenExpiring
)


# What the gateway sends a client: a text frame, or reply audio in binary frames.
Outbound = ServerMessage | AudioFrames


def error(problem: Problem, in_reply_to: ClientMessageType | None = None) -> Error:
    """An ``error`` message for the client: ``problem``, answering the client message of type
    ``in_reply_to`` (None: no client message caused it)."""
    return Error(
        ErrorPayload(problem.message, problem.code, in_reply_to, problem.status, problem.reason)
    )


_encoder: Final = msgspec.json.Encoder()
_kept_decoder: Final = msgspec.json.Decoder(Outbound)


def encode_server_message(message: ServerMessage) -> str:
    """The text frame for a server message."""
    return _encoder.encode(message).decode()


def encode_kept(message: Outbound) -> bytes:
    """A server message as kept for a parked session (and forwarded between instances)."""
    return _encoder.encode(message)


def decode_kept(data: bytes) -> Outbound | None:
    """A kept message back as it was produced; None if it is not one (never sent on)."""
    try:
        message: Outbound = _kept_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return message
