"""How long, and how much of its peer's bytes, the WebSocket protocol still reads once a
connection is closing (issue 24): after a close frame of the gateway's own, and after a close
the peer caused (``metered_reads.enough_after_close`` and ``linger``, for both engines)."""

from __future__ import annotations

from typing import Final

# After a close the client caused (a frame too big), how long its remaining bytes are still
# read and discarded before the socket is closed (lingering close, as the RFC and nginx do),
# and how much of them at most: this, or the largest message if larger (the rest of a frame
# that was too big, from a client that reads only once it has sent it). Discarding costs
# only the reads (~2 ms for 16 MiB); past it the socket is no longer read.
LINGER_SECONDS: Final = 2.0
LINGER_BYTES: Final = 16 << 20
# After a close frame the gateway sent on its own (a refusal, a token expiry, a drain): how
# long the peer has to answer it, and how much more of its bytes are read meanwhile (its
# close reply is in them; a well-behaved client has little in flight). uvicorn waits 10 s
# and reads everything: 4.1 GiB in 12 s over two refused sockets (issue 24).
CLOSE_TIMEOUT: Final = 1.0
CLOSE_READ_BYTES: Final = 64 * 1024
