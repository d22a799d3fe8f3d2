"""What the kernel knows of a TCP peer that the application cannot see: whether it still
acknowledges what the gateway sends.

A client the gateway reads slowly on purpose (throttled, or a message waiting for the app)
cannot answer a ping in time, so a missed pong is not held against it. A peer that vanished
without a reset or a FIN (its network gone, a phone in a tunnel for good) would then be
kept until the kernel gives up retransmitting, ~15 minutes. Its kernel is what tells the
two apart: a live peer's TCP acknowledges the ping within a round trip, whether or not its
application reads; a vanished one acknowledges nothing while the gateway retransmits.

Linux only (``TCP_INFO``); elsewhere nothing is known and nothing is decided from it.
"""

from __future__ import annotations

import socket
import struct
from typing import Final, Protocol

# struct tcp_info (linux/tcp.h): tcpi_retransmits and tcpi_probes are the 3rd and 4th bytes;
# tcpi_last_ack_recv, milliseconds since the peer last acknowledged anything, the u32 at 56.
_RETRANSMITS: Final = 2
_PROBES: Final = 3
_LAST_ACK_RECV: Final = struct.Struct("=I")
_LAST_ACK_RECV_AT: Final = 56
_SIZE: Final = _LAST_ACK_RECV_AT + _LAST_ACK_RECV.size
_TCP_INFO: Final[int | None] = getattr(socket, "TCP_INFO", None)


class _Socket(Protocol):
    def getsockopt(self, level: int, option: int, buflen: int) -> bytes: ...


def silent_for(info: bytes, seconds: float) -> bool:
    """Whether a ``TCP_INFO`` reading shows a peer gone quiet: data of ours waits for its
    acknowledgement (retransmitted, or window probes unanswered) and it has acknowledged
    nothing for ``seconds``. A live peer that does not read still acknowledges (its window
    probes are answered), so it is never taken for gone."""
    if len(info) < _SIZE:
        return False
    waiting = info[_RETRANSMITS] > 0 or info[_PROBES] > 0
    (quiet_ms,) = _LAST_ACK_RECV.unpack_from(info, _LAST_ACK_RECV_AT)
    return waiting and quiet_ms >= seconds * 1000


def gone_quiet(sock: _Socket | None, seconds: float) -> bool:
    """``silent_for`` of a connected socket; False where the kernel cannot tell."""
    if sock is None or _TCP_INFO is None:
        return False
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _SIZE)
    except OSError:
        return False
    return silent_for(info, seconds)
