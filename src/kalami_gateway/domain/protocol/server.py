"""The messages the gateway sends: encoded as text frames, and kept as bytes for a parked
session (and forwarded between instances) to be read back as they were produced."""

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
    | SessionEnded
    | Pong
    | HeartbeatReply
    | Error
    | Push
    | Refreshed
    | TokenExpiring
)


def error(problem: Problem, in_reply_to: ClientMessageType | None = None) -> Error:
    """An ``error`` message for the client: ``problem``, answering the client message of type
    ``in_reply_to`` (None: no client message caused it)."""
    return Error(
        ErrorPayload(problem.message, problem.code, in_reply_to, problem.status, problem.reason)
    )


_encoder: Final = msgspec.json.Encoder()
_server_decoder: Final = msgspec.json.Decoder(ServerMessage)


def encode_server_message(message: ServerMessage) -> str:
    """The text frame for a server message."""
    return _encoder.encode(message).decode()


def encode_kept(message: ServerMessage) -> bytes:
    """A server message as kept for a parked session (and forwarded between instances)."""
    return _encoder.encode(message)


def decode_kept(data: bytes) -> ServerMessage | None:
    """A kept message back as it was produced; None if it is not one (never sent on)."""
    try:
        message: ServerMessage = _server_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return message
