"""The gateway's own RFC 6455 frame codec for the server side of a WebSocket (issue 27, first
step), sans-I/O: ``FrameParser`` turns a client's bytes into complete messages and control
events (each with the bytes to send back), and ``serializer`` builds the server's frames.
``protocol.NativeWebSocketProtocol`` (exported here too) runs it under uvicorn with
``WS_ENGINE=native`` (``handshake``: the opening handshake; ``inbox``: what waits for the app;
the protocol's parts beside it, ``protocol`` says which).

It does what websockets' sans-I/O ``ServerProtocol`` does after the handshake, frame for frame
and at the same point of a stream (tests/unit/adapters/server/
test_native_codec_differential.py feeds both the same random and hostile byte streams), minus
its generator-based machinery: frames are parsed straight out of each read, a buffer is kept
only for a partial frame, the payload is unmasked by websockets' C speedup, and a message's
text is checked as UTF-8 fragment by fragment. No extension is negotiated: permessage-deflate
is out of scope for now, so a frame with RSV1 set fails the connection with 1002, as it does
on a connection without the extension."""

from kalami_gateway.adapters.server.native.events import Close, Event, Failure, Ping, Pong
from kalami_gateway.adapters.server.native.parser import FrameParser
from kalami_gateway.adapters.server.native.protocol import (
    NativeWebSocketProtocol,
    native_websocket_protocol,
)

__all__ = [
    "Close",
    "Event",
    "Failure",
    "FrameParser",
    "NativeWebSocketProtocol",
    "Ping",
    "Pong",
    "native_websocket_protocol",
]
