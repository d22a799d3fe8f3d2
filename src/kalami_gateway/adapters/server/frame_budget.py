"""The WebSocket protocol's frame budget (issue 24) in numbers, and the arithmetic of its
level; each engine's protocol holds the level per connection and counts every frame it
parses against it (``metered_reads``, one for both).

Every frame costs something, whatever its size: parsing one, answering a ping, keeping a
1-byte fragment. So the bytes are budgeted where they arrive, before they are parsed:
``frame_rate`` frames a second per connection (WS_FRAME_RATE), any frame: data, control,
continuation; a burst of two seconds' worth. A client frame is at least ``MIN_FRAME`` bytes,
so a read is parsed in pieces that cannot hold more frames than the budget has left; past it
the rest waits unparsed (one read at most) and reading is paused until the budget has come
back (TCP pushes back on that client; nobody else pays). A read within the budget is parsed
whole, as before (a comparison, a subtraction). Measured
(tests/integration/test_ws_budgets.py): a flood of empty frames had 155,000-250,000 of them
parsed in 2 s and another client's ping round trip at 0.8-1.5 s; now the budget's rate after
its burst, round trips under 1 ms.
"""

from __future__ import annotations

import sys
from typing import Final

# The shortest frame a client can send: a 2-byte header and the 4-byte mask. A read of n
# bytes holds at most n // MIN_FRAME frames, so it is parsed in pieces no longer than the
# frame budget allows (websockets parses all it is given at once: 256 KB of empty frames
# was ~43,000 frames, 0.2 s of one parse).
MIN_FRAME: Final = 6
# The longest read parsed at once while the frame budget is on (larger ones are cut).
PIECE: Final = 8192
# The budget refills continuously; a burst of this many seconds' worth passes at once.
BURST_SECONDS: Final = 2.0
# A connection over its budget is read again once this much of it has come back (its frames
# are then parsed in batches, not one timer per frame).
WAKE_SECONDS: Final = 0.1
# The room of a connection without a frame budget: any read is parsed whole.
NO_BUDGET: Final = sys.maxsize


def refilled(credit: float, stamp: float, now: float, rate: float) -> float:
    """The budget's level at ``now`` (``credit`` frames at ``stamp``, refilling at ``rate``
    frames a second): it refills continuously, up to a burst of ``BURST_SECONDS``' worth."""
    return min(rate * BURST_SECONDS, credit + (now - stamp) * rate)


def room(credit: float) -> int:
    """How many bytes of a read may be parsed at once with ``credit`` frames left: at most
    ``MIN_FRAME`` per frame, so never more frames than the budget holds; at most ``PIECE``."""
    return min(PIECE, max(0, int(credit)) * MIN_FRAME)


def throttle_wait(rate: float, credit: float) -> float:
    """How long a connection over its budget (``credit`` frames, below one) goes unread: until
    ``WAKE_SECONDS``' worth of frames, one at least, has come back."""
    return (max(1.0, rate * WAKE_SECONDS) - credit) / rate
