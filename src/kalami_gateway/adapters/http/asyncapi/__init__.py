"""The WebSocket protocol as an AsyncAPI 3.0 document, served at /schema/asyncapi.json beside
the OpenAPI schema of the HTTP routes (issue 26): ``document`` builds it, ``route`` serves it.

The schemas are generated (``msgspec.json.schema_components``) from the very Structs the gateway
decodes client frames into and encodes its own frames from (domain/protocol), so a message
added there appears here by itself, and a field cannot be documented one way and decoded
another. What no type can say (a summary and examples per message, which messages go as binary
frames) is in ``sent`` and ``received`` (``notes``: their shape). docs/protocol.md stays the
human guide; a test holds the two to the same message types.

The document describes a client of the gateway: its one channel is the connection to ``/ws``
(the handshake's query and headers are its ``ws`` binding), the ``send`` operation is what
the client sends (client → gateway) and ``receive`` what it receives (gateway → client).
"""

from kalami_gateway.adapters.http.asyncapi.document import (
    ASYNCAPI_PATH,
    BINARY,
    BINARY_FRAME,
    JSON,
    RECORDING_FRAME_MESSAGE,
    asyncapi_document,
    wire_type,
)
from kalami_gateway.adapters.http.asyncapi.notes import Example, Notes
from kalami_gateway.adapters.http.asyncapi.received import RECEIVE
from kalami_gateway.adapters.http.asyncapi.route import asyncapi_route
from kalami_gateway.adapters.http.asyncapi.sent import RECORDING_FRAME, SEND

__all__ = [
    "ASYNCAPI_PATH",
    "BINARY",
    "BINARY_FRAME",
    "JSON",
    "RECEIVE",
    "RECORDING_FRAME",
    "RECORDING_FRAME_MESSAGE",
    "SEND",
    "Example",
    "Notes",
    "asyncapi_document",
    "asyncapi_route",
    "wire_type",
]
