"""The messages a client sends, and how a text frame becomes one of them.

Client frames are decoded in two steps (the envelope, then the payload for its type) so every
failure gets its own message and code: malformed JSON, not an object (``malformed``), unknown
type (``unknown_type``), payload of the wrong shape (``invalid_payload``). Fields a payload
does not know are ignored in every message type (a newer app must not break on an older
gateway); a known field of the wrong type is an error.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, get_args

import msgspec

from kalami_gateway.domain.protocol.errors import ErrorCode, Problem

AudioFormat = Literal["webm", "wav", "mp3", "m4a", "ogg"]
AUDIO_FORMATS: Final[tuple[str, ...]] = get_args(AudioFormat)
# How a session's client takes the tutor's spoken reply (``start_session``'s ``replyAudio``):
# ``json``, one ``audio`` text message with the audio in base64 (the seed protocol's and the
# app's way, the default); ``binary``, an ``audio_start`` text message announcing it, then
# the audio itself in binary frames of at most ``AUDIO_FRAME_BYTES`` (server.py).
ReplyAudio = Literal["json", "binary"]


class _Payload(msgspec.Struct, frozen=True, rename="camel"):
    """Base of client payloads: fields in camelCase; unknown ones are ignored."""


class _FreePayload(msgspec.Struct, frozen=True):
    """Base of payloads that carry nothing; extra keys (a client's timestamp) are ignored."""


NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class StartSessionPayload(_Payload, frozen=True):
    profile_id: NonEmptyStr
    topic: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    # Optional, so every client written before it starts its sessions as it did.
    reply_audio: ReplyAudio = "json"


class StartRecordingPayload(_Payload, frozen=True):
    format: AudioFormat = "webm"


SessionRef = Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | int


class AudioPayload(_Payload, frozen=True):
    # Decoded from base64 as the frame is parsed: the text is never copied.
    audio_base64: bytes = msgspec.field(name="audio_base64")
    format: AudioFormat = "webm"
    # The app's dialect: the session (opened over REST) this one utterance belongs to.
    session_id: SessionRef | None = msgspec.field(name="session_id", default=None)


class HeartbeatPayload(_FreePayload, frozen=True):
    """The app answers every heartbeat with ``{"pong": true}``: that one is not answered."""

    pong: Any = None

    @property
    def is_answer(self) -> bool:
        return self.pong is True


class EmptyPayload(_FreePayload, frozen=True):
    pass


class RefreshPayload(_Payload, frozen=True):
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]


class _ClientMessage(msgspec.Struct, frozen=True, tag_field="type"):
    pass


class StartSession(_ClientMessage, frozen=True, tag="start_session"):
    payload: StartSessionPayload


class StartRecording(_ClientMessage, frozen=True, tag="start_recording"):
    payload: StartRecordingPayload = StartRecordingPayload()


class StopRecording(_ClientMessage, frozen=True, tag="stop_recording"):
    payload: EmptyPayload = EmptyPayload()


class AudioMessage(_ClientMessage, frozen=True, tag="audio"):
    payload: AudioPayload


class EndSession(_ClientMessage, frozen=True, tag="end_session"):
    payload: EmptyPayload = EmptyPayload()


class Ping(_ClientMessage, frozen=True, tag="ping"):
    payload: EmptyPayload = EmptyPayload()


class Heartbeat(_ClientMessage, frozen=True, tag="heartbeat"):
    payload: HeartbeatPayload = HeartbeatPayload()


class Refresh(_ClientMessage, frozen=True, tag="refresh"):
    """A fresh token of the same user, so the connection outlives the first one's expiry."""

    payload: RefreshPayload


ClientMessage = (
    StartSession
    | StartRecording
    | StopRecording
    | AudioMessage
    | EndSession
    | Ping
    | Heartbeat
    | Refresh
)

# The wire ``type`` of every client message (an error's ``inReplyTo`` is one of them).
ClientMessageType = Literal[
    "start_session",
    "start_recording",
    "stop_recording",
    "audio",
    "end_session",
    "ping",
    "heartbeat",
    "refresh",
]

_CLIENT_TYPES: Final[dict[str, type[ClientMessage]]] = {
    "start_session": StartSession,
    "start_recording": StartRecording,
    "stop_recording": StopRecording,
    "audio": AudioMessage,
    "end_session": EndSession,
    "ping": Ping,
    "heartbeat": Heartbeat,
    "refresh": Refresh,
}
CLIENT_MESSAGE_TYPES: Final[tuple[ClientMessageType, ...]] = get_args(ClientMessageType)
_KNOWN_TYPES: Final[dict[str, ClientMessageType]] = {name: name for name in CLIENT_MESSAGE_TYPES}
_TYPE_NAMES: Final[dict[type[ClientMessage], ClientMessageType]] = {
    _CLIENT_TYPES[name]: name for name in CLIENT_MESSAGE_TYPES
}


def message_type(message: ClientMessage) -> ClientMessageType:
    """The wire ``type`` of a client message."""
    return _TYPE_NAMES[type(message)]


# Commands without a payload are answered from these, so a ping costs one envelope decode.
_PAYLOADLESS: Final[dict[str, ClientMessage]] = {
    "stop_recording": StopRecording(),
    "end_session": EndSession(),
    "ping": Ping(),
    "heartbeat": Heartbeat(),
}


_NO_PAYLOAD: Final = msgspec.Raw(b"{}")
_NULL_PAYLOAD: Final = msgspec.Raw(b"null")


class _Envelope(msgspec.Struct, frozen=True):
    type: str
    payload: msgspec.Raw = _NO_PAYLOAD


class ProtocolError(msgspec.Struct, frozen=True):
    """Why a client frame could not be understood; ``message`` and ``code`` go back to the
    client. ``message_type`` is the type the frame named, if it named one (known or not)."""

    message: str
    code: ErrorCode
    message_type: str | None = None

    @property
    def problem(self) -> Problem:
        return Problem(self.message, self.code)

    @property
    def in_reply_to(self) -> ClientMessageType | None:
        """The type of the message the error answers: the frame's, if the gateway knows it."""
        return None if self.message_type is None else _KNOWN_TYPES.get(self.message_type)


_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)
_any_decoder: Final = msgspec.json.Decoder()


def _payload_type(cls: type[ClientMessage]) -> type[msgspec.Struct]:
    field = msgspec.structs.fields(cls)[0]
    payload_type: type[msgspec.Struct] = field.type
    return payload_type


_payload_decoders: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    name: msgspec.json.Decoder(_payload_type(cls)) for name, cls in _CLIENT_TYPES.items()
}


def decode_client_message(frame: str | bytes) -> ClientMessage | ProtocolError:
    """Turn a text frame into a command, or into a ProtocolError saying what was wrong."""
    try:
        envelope = _envelope_decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return _explain_envelope_failure(frame, exc)

    message_type = envelope.type
    cls = _CLIENT_TYPES.get(message_type)
    if cls is None:
        return _unknown_type(message_type)
    raw = envelope.payload
    if raw == _NULL_PAYLOAD:
        raw = _NO_PAYLOAD
    ready = _PAYLOADLESS.get(message_type)
    if ready is not None and raw == _NO_PAYLOAD:
        return ready
    try:
        payload = _payload_decoders[message_type].decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return ProtocolError(
            f"Invalid payload for {message_type!r}: {_describe(exc)}. "
            f"Expected {_PAYLOAD_HINTS[message_type]}.",
            ErrorCode.INVALID_PAYLOAD,
            message_type,
        )
    message: ClientMessage = cls(payload)
    return message


def _unknown_type(message_type: str) -> ProtocolError:
    return ProtocolError(
        f"Unknown message type {message_type!r}; expected one of: "
        + ", ".join(CLIENT_MESSAGE_TYPES)
        + ".",
        ErrorCode.UNKNOWN_TYPE,
        message_type,
    )


_FORMAT_HINT: Final = "|".join(f'"{f}"' for f in AUDIO_FORMATS)
# start_session's hint leaves the optional "replyAudio" out, so its errors keep the words they
# always had (a bad replyAudio is named by the error's own description of the field).
_PAYLOAD_HINTS: Final[dict[str, str]] = {
    "start_session": '{"profileId": string, "topic"?: string}',
    "start_recording": '{"format"?: ' + _FORMAT_HINT + "}",
    "stop_recording": "{} or no payload",
    "audio": '{"audio_base64": string, "format"?: '
    + _FORMAT_HINT
    + ', "session_id"?: string or integer}',
    "end_session": "{} or no payload",
    "ping": "{} or no payload",
    "heartbeat": '{} or no payload (the answer to the gateway\'s heartbeat, {"pong": true}, '
    "is not answered)",
    "refresh": '{"token": string}',
}


def _explain_envelope_failure(frame: str | bytes, exc: Exception) -> ProtocolError:
    try:
        value = _any_decoder.decode(frame)
    except msgspec.DecodeError:
        return ProtocolError(
            f"Malformed JSON: {_describe(exc)}. Send one JSON object per text frame, "
            'like {"type": "ping"}.',
            ErrorCode.MALFORMED,
        )
    if not isinstance(value, dict):
        kind = _json_kind(value)
        return ProtocolError(
            f'Expected a JSON object like {{"type": "ping"}}, got {kind}.', ErrorCode.MALFORMED
        )
    message_type = value.get("type")
    if "type" not in value:
        return ProtocolError(
            'Message has no "type" field; expected one of: '
            + ", ".join(CLIENT_MESSAGE_TYPES)
            + ".",
            ErrorCode.MALFORMED,
        )
    if not isinstance(message_type, str):
        return ProtocolError(
            f'Message "type" must be a string, got {_json_kind(message_type)}.',
            ErrorCode.MALFORMED,
        )
    if message_type not in _CLIENT_TYPES:
        return _unknown_type(message_type)
    return ProtocolError(
        f"Invalid payload for {message_type!r}: payload must be a JSON object, got "
        f"{_json_kind(value.get('payload'))}. Expected {_PAYLOAD_HINTS[message_type]}.",
        ErrorCode.INVALID_PAYLOAD,
        message_type,
    )


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _describe(exc: Exception) -> str:
    text = str(exc).removeprefix("JSON is malformed: ")
    if text[1:2].islower():
        text = text[:1].lower() + text[1:]
    return text or type(exc).__name__
