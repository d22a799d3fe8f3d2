"""The AsyncAPI 3.0 document itself: the schemas generated from the domain's message Structs,
each message with its notes (``sent``, ``received``), the ``/ws`` channel with its handshake
binding, the ``send`` and ``receive`` operations and the three ways a token may come."""

from __future__ import annotations

from typing import Any, Final, get_args

import msgspec

from kalami_gateway import __version__
from kalami_gateway.adapters.http.asyncapi.notes import Notes
from kalami_gateway.adapters.http.asyncapi.received import RECEIVE
from kalami_gateway.adapters.http.asyncapi.sent import RECORDING_FRAME, SEND
from kalami_gateway.domain.auth import BEARER_SUBPROTOCOL, MAX_TOKEN_LENGTH, PROTOCOL_VERSION
from kalami_gateway.domain.protocol import ClientMessage, Outbound

ASYNCAPI_PATH: Final = "/schema/asyncapi.json"
ASYNCAPI_VERSION: Final = "3.0.0"
CHANNEL: Final = "ws"
# The binary frames a client streams while recording: no Struct, so a name of their own.
RECORDING_FRAME_MESSAGE: Final = "RecordingFrame"
# Every binary frame's message has this name (text messages: their wire ``type``).
BINARY_FRAME: Final = "binary frame"
WEBSOCKETS_BINDING_VERSION: Final = "0.1.0"
JSON: Final = "application/json"
BINARY: Final = "application/octet-stream"
_SCHEMA_REF: Final = "#/components/schemas/{name}"

Json = Any
MessageType = type[msgspec.Struct]

_DESCRIPTION: Final = (
    "The gateway's WebSocket protocol, as a client sees it: `send` is what a client sends, "
    "`receive` what the gateway sends it. Text frames are JSON objects "
    '`{"type": ..., "payload": {...}}` (`payload` may be omitted where every field has a '
    "default); a field the gateway does not know is ignored in every message. Binary frames "
    "are audio: the learner's while recording, and the tutor's reply for a session started "
    "with replyAudio binary (announced by audio_start). Each message is allowed only in some "
    "states of the voice session (idle → active → recording → processing): its summary says "
    "which. A message the gateway cannot accept gets an `error` back; the connection stays "
    "open. The human guide, with the close codes and resuming after a drop: docs/protocol.md. "
    f"Offer the subprotocol `{PROTOCOL_VERSION}` to be answered with it (the protocol of this "
    "document)."
)


def asyncapi_document() -> dict[str, Json]:
    """The whole document, as JSON-ready data (built afresh on each call: the route encodes it
    once)."""
    client: tuple[MessageType, ...] = get_args(ClientMessage)
    server: tuple[MessageType, ...] = get_args(Outbound)
    notes: dict[MessageType, Notes] = {**SEND, **RECEIVE}
    # Only messages sent as JSON have a Struct's schema: a binary one is raw bytes.
    text = [cls for cls in (*client, *server) if not (cls in notes and notes[cls].binary)]
    _, schemas = msgspec.json.schema_components(text, ref_template=_SCHEMA_REF)
    messages: dict[str, Json] = {cls.__name__: _message(cls, notes.get(cls)) for cls in client}
    messages[RECORDING_FRAME_MESSAGE] = _binary_message(RECORDING_FRAME_MESSAGE, RECORDING_FRAME)
    sent = list(messages)
    received = [cls.__name__ for cls in server]
    messages |= {cls.__name__: _message(cls, notes.get(cls)) for cls in server}
    channel_ref = {"$ref": f"#/channels/{CHANNEL}"}
    security = [{"$ref": f"#/components/securitySchemes/{name}"} for name in _SECURITY_SCHEMES]
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Kalami Gateway WebSocket",
            "version": __version__,
            "description": _DESCRIPTION,
        },
        "defaultContentType": JSON,
        "channels": {
            CHANNEL: {
                "address": "/ws",
                "title": "A learner's connection",
                "description": (
                    "One WebSocket per learner, opened with the learner's JWT (one of three "
                    "ways: the security schemes) and, after a drop, ?resume= to carry the "
                    "session on. The gateway always accepts, then closes a refused connection "
                    "with a code and reason (docs/protocol.md §1)."
                ),
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
                "bindings": {"ws": _handshake()},
            }
        },
        "operations": {
            "send": {
                "action": "send",
                "channel": channel_ref,
                "title": "What a client sends (client → gateway)",
                "security": security,
                "messages": [_channel_message(name) for name in sent],
            },
            "receive": {
                "action": "receive",
                "channel": channel_ref,
                "title": "What the gateway sends (gateway → client)",
                "security": security,
                "messages": [_channel_message(name) for name in received],
            },
        },
        "components": {
            "messages": messages,
            "schemas": schemas,
            "securitySchemes": _SECURITY_SCHEMES,
        },
    }


def _channel_message(name: str) -> Json:
    return {"$ref": f"#/channels/{CHANNEL}/messages/{name}"}


def wire_type(cls: MessageType) -> str:
    """The ``type`` a message Struct has on the wire (its msgspec tag)."""
    tag = cls.__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{cls.__name__} is not a message: it has no string tag")
    return tag


def _message(cls: MessageType, notes: Notes | None) -> Json:
    if notes is not None and notes.binary:
        return _binary_message(cls.__name__, notes)
    message: dict[str, Json] = {
        "name": wire_type(cls),
        "title": cls.__name__,
        "contentType": JSON,
        "payload": {"$ref": _SCHEMA_REF.format(name=cls.__name__)},
    }
    return message | (_notes(notes) if notes is not None else {})


def _binary_message(title: str, notes: Notes) -> Json:
    return {
        "name": BINARY_FRAME,
        "title": title,
        "contentType": BINARY,
        "payload": {"type": "string", "format": "binary"},
        **_notes(notes),
    }


def _notes(notes: Notes) -> dict[str, Json]:
    said: dict[str, Json] = {
        "summary": notes.summary,
        "examples": [
            {"name": example.name, "summary": example.summary, "payload": example.payload}
            for example in notes.examples
        ],
    }
    if notes.description is not None:
        said["description"] = notes.description
    return said


def _handshake() -> Json:
    """The ``ws`` channel binding: the upgrade request's query and headers."""
    return {
        "method": "GET",
        "query": {
            "type": "object",
            "properties": {
                "token": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_TOKEN_LENGTH,
                    "description": (
                        "The learner's JWT (HS256, with sub and exp), when neither header "
                        "carries it. URLs end up in access logs: prefer a header."
                    ),
                },
                "resume": {
                    "type": "string",
                    "description": (
                        "The last resumeToken the dropped connection got (connected): its "
                        "session carries on here (session_resumed), or an error says why not."
                    ),
                },
            },
        },
        "headers": {
            "type": "object",
            "properties": {
                "Authorization": {
                    "type": "string",
                    "description": (
                        "Bearer <JWT>: native clients. A header of another scheme (a proxy's "
                        "Basic) is not a token: ignored."
                    ),
                },
                "Sec-WebSocket-Protocol": {
                    "type": "string",
                    "description": (
                        f"Offer {PROTOCOL_VERSION} and it is answered (nothing offered: nothing "
                        f"answered). Browsers, which can set no other header, add their token "
                        f"as a second entry, {BEARER_SUBPROTOCOL}<JWT>, never answered back."
                    ),
                    "examples": [f"{PROTOCOL_VERSION}, {BEARER_SUBPROTOCOL}eyJhbGciOi..."],
                },
            },
        },
        "bindingVersion": WEBSOCKETS_BINDING_VERSION,
    }


# The three ways a token may come (any one will do). Of a token sent several ways, the first
# of query, Authorization, subprotocol is the one judged (docs/protocol.md §1).
_SECURITY_SCHEMES: Final[dict[str, Json]] = {
    "bearerHeader": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "Authorization: Bearer <JWT> on the upgrade request (native clients).",
    },
    "bearerSubprotocol": {
        "type": "httpApiKey",
        "name": "Sec-WebSocket-Protocol",
        "in": "header",
        "description": (
            f"An entry {BEARER_SUBPROTOCOL}<JWT> beside {PROTOCOL_VERSION} (browsers: "
            f'new WebSocket(url, ["{PROTOCOL_VERSION}", "{BEARER_SUBPROTOCOL}" + jwt])).'
        ),
    },
    "tokenQuery": {
        "type": "httpApiKey",
        "name": "token",
        "in": "query",
        "description": "?token=<JWT> (clients older than the other two ways).",
    },
}
