"""The messages the gateway sends: encoded as text frames, and kept as bytes for a parked
session (and forwarded between instances) to be read back as they were produced."""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from kalami_gateway.domain.protocol.client import EmptyPayload


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


class ErrorPayload(msgspec.Struct, frozen=True):
    message: str


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


def error(message: str) -> Error:
    """An ``error`` message for the client."""
    return Error(ErrorPayload(message))


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
