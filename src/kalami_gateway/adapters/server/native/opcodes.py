"""RFC 6455's frame opcodes (§5.2); every other value (3-7, 11-15) is reserved."""

from __future__ import annotations

from typing import Final

CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA

KNOWN: Final = frozenset((CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG))
# Control frames have the top bit of the opcode set: 0x8 and up.
CONTROL: Final = 0x8
# The longest payload of a control frame (§5.5).
MAX_CONTROL_PAYLOAD: Final = 125
