"""Close codes: which ones a close frame may carry, both ways, and the ones the parser fails a
connection with. The rule is websockets' (``frames.Close.check``): RFC 6455's codes that may
be sent (1000-1003, 1007-1011), the ones IANA registered since (1012-1014), and the ranges
for libraries and applications (3000-4999). 1004, 1005, 1006 and 1015 never travel in a
frame; 0-999, 1016-2999 and 5000 up are not valid on the wire."""

from __future__ import annotations

from typing import Final

NORMAL_CLOSURE: Final = 1000
PROTOCOL_ERROR: Final = 1002
NO_STATUS_RCVD: Final = 1005  # what a close frame without a payload stands for
INVALID_DATA: Final = 1007
MESSAGE_TOO_BIG: Final = 1009

_RFC_AND_IANA: Final = frozenset(
    (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
)


def valid_on_the_wire(code: int) -> bool:
    """Whether a close frame may carry ``code``."""
    return code in _RFC_AND_IANA or 3000 <= code < 5000
