"""WebSocket frames as the scale clients need them: a masked client frame, and the server's
frames split out of what a socket has received so far (pure: no I/O, no state)."""

from __future__ import annotations

import struct
from typing import Final

TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA
NORMAL_CLOSURE: Final = 1000
_ZERO_MASK: Final = b"\x00\x00\x00\x00"  # a valid key; XOR with it leaves the payload as is

Frame = tuple[int, bytes]  # (opcode, payload)


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One masked, final client frame."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return header + _ZERO_MASK + payload


CLOSE_FRAME: Final = client_frame(CLOSE, struct.pack("!H", NORMAL_CLOSURE))


def split_frames(data: bytes) -> tuple[list[Frame], bytes]:
    """The complete (unmasked, server-sent) frames at the start of ``data``, and the bytes of
    an incomplete one after them (to be prefixed to what arrives next)."""
    frames: list[Frame] = []
    offset = 0
    end = len(data)
    while end - offset >= 2:
        opcode = data[offset] & 0x0F
        size = data[offset + 1] & 0x7F
        start = offset + 2
        if size == 126:
            if end - offset < 4:
                break
            size = struct.unpack_from("!H", data, offset + 2)[0]
            start = offset + 4
        elif size == 127:
            if end - offset < 10:
                break
            size = struct.unpack_from("!Q", data, offset + 2)[0]
            start = offset + 10
        if end < start + size:
            break
        frames.append((opcode, data[start : start + size]))
        offset = start + size
    return frames, data[offset:]


def close_code(payload: bytes) -> int | None:
    """The status code of a close frame's payload (None: it had none)."""
    return int(struct.unpack_from("!H", payload)[0]) if len(payload) >= 2 else None
