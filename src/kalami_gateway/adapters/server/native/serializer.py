"""The server's frames, as bytes to write: unmasked (a server never masks, RFC 6455 §5.1),
no RSV bit (no extension), each length in its shortest form (§5.2: 7 bits up to 125, 16 up
to 65,535, 64 beyond).

``frame_header`` alone serves a caller that writes a large payload after it without copying
it (``transport.writelines``); the others return the whole frame."""

from __future__ import annotations

import struct
from typing import Final

from kalami_gateway.adapters.server.native import opcodes
from kalami_gateway.adapters.server.native.close_codes import valid_on_the_wire

_FIN: Final = 0x80
_TEXT: Final = _FIN | opcodes.TEXT
_BINARY: Final = _FIN | opcodes.BINARY
_SHORT = struct.Struct("!BB").pack
_MEDIUM = struct.Struct("!BBH").pack
_LONG = struct.Struct("!BBQ").pack


def frame_header(opcode: int, length: int, *, fin: bool = True) -> bytes:
    """The header of a frame of ``length`` payload bytes (``fin`` False: a fragment that
    more of its message follows)."""
    first = _FIN | opcode if fin else opcode
    if length < 126:
        return _SHORT(first, length)
    if length < 65536:
        return _MEDIUM(first, 126, length)
    return _LONG(first, 127, length)


def text_frame(text: str | bytes) -> bytes:
    """A text message in one frame (``bytes``: already UTF-8, not checked again)."""
    data = text.encode() if isinstance(text, str) else text
    length = len(data)
    if length < 126:  # the common case inline: one call fewer
        return _SHORT(_TEXT, length) + data
    return frame_header(opcodes.TEXT, length) + data


def binary_frame(data: bytes) -> bytes:
    """A binary message in one frame."""
    length = len(data)
    if length < 126:
        return _SHORT(_BINARY, length) + data
    return frame_header(opcodes.BINARY, length) + data


def ping_frame(payload: bytes = b"") -> bytes:
    """A ping; ``ValueError`` past 125 bytes of payload."""
    return _control(opcodes.PING, payload)


def pong_frame(payload: bytes) -> bytes:
    """A pong; ``ValueError`` past 125 bytes of payload."""
    return _control(opcodes.PONG, payload)


def close_frame(code: int | None = None, reason: str = "") -> bytes:
    """A close frame: ``code`` and ``reason``, or no payload at all (``code`` None: the peer
    reads 1005, no status). ``ValueError`` for a code that may not travel in a frame
    (``close_codes``), a reason without a code, or a payload past 125 bytes."""
    if code is None:
        if reason:
            raise ValueError("a close reason needs a close code")
        return _control(opcodes.CLOSE, b"")
    if not valid_on_the_wire(code):
        raise ValueError(f"close code {code} may not be sent in a close frame")
    return _control(opcodes.CLOSE, struct.pack("!H", code) + reason.encode())


def _control(opcode: int, payload: bytes) -> bytes:
    length = len(payload)
    if length > opcodes.MAX_CONTROL_PAYLOAD:
        raise ValueError(f"a control frame's payload is at most 125 bytes, not {length}")
    return _SHORT(_FIN | opcode, length) + payload
