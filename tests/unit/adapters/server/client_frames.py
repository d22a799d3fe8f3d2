"""Client frames as a client would send them (or not): masked by default, any length
encoding, any first-byte bits. Shared by the codec's tests and the hostile handshake test."""

from __future__ import annotations

import struct
from typing import Final

from websockets.utils import apply_mask

MASK: Final = b"\x37\xfa\x21\x3d"


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: str = "shortest",
) -> bytes:
    """A client frame as a client would send it (or not)."""
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    bit = 0x80 if masked else 0
    size = len(payload)
    if length == "16-bit" or (length == "shortest" and 126 <= size < 65536):
        head = struct.pack("!BBH", first, bit | 126, size)
    elif length == "64-bit" or (length == "shortest" and size >= 65536):
        head = struct.pack("!BBQ", first, bit | 127, size)
    else:
        head = struct.pack("!BB", first, bit | size)
    return head + (MASK + apply_mask(payload, MASK) if masked else payload)
