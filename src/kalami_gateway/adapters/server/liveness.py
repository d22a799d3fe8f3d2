"""Liveness that a rate limit cannot fool, one for both engines (``LivelyWebSocketProtocol``'s
``keepalive_timeout``, ``NativeWebSocketProtocol``'s ``_pong_timed_out``).

A connection over its rate (WS_MESSAGE_RATE, WS_AUDIO_RATE) or its frame budget is read
slowly on purpose, so the pong to a keepalive ping may sit in the socket behind many of its
messages for longer than the ping timeout. While the gateway itself holds the peer's frames
back (``holding_back``) a missed pong is not held against the peer: it is pinged again at
once instead, and writing that ping is what notices a peer that has gone with a reset (with
reading paused, a reset is seen only by a write). A peer gone without one is told by its
kernel acknowledging nothing since the ping (``tcp_peer``), and let go
(``pong_excused``). Either way a vanished client is let go within two intervals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from kalami_gateway.adapters.server import tcp_peer
from kalami_gateway.adapters.server.metered_reads import MeteredReader

log = logging.getLogger(__name__)


class Watched(MeteredReader, Protocol):
    """A WebSocket protocol of either engine: the state of its reads' budgets tells whether
    it is reading its peer."""

    _unanswered: bool  # let go for not answering a ping in time


def holding_back(watched: Watched) -> bool:
    """Whether the gateway itself holds the peer's frames back: a message waits for the
    app, reading is paused for it, or the frame budget is spent (or was, and what is read
    is still its backlog)."""
    return (
        watched._read_paused
        or not watched._inbox.empty()
        or watched._throttle is not None
        or watched._stash is not None
        or watched._behind
    )


def pong_excused(watched: Watched, ping_timeout: float, ping_again: Callable[[], object]) -> bool:
    """A pong did not come within ``ping_timeout``: whether that is not held against the
    peer, because the gateway is holding its frames back. Then it is pinged again at once
    (``ping_again``), unless its kernel has acknowledged nothing for half the timeout (its
    network gone, no reset: it would be held until the kernel gives up, ~15 minutes), in
    which case it is let go here, as unanswered."""
    if not holding_back(watched):
        return False
    if tcp_peer.gone_quiet(watched.transport.get_extra_info("socket"), ping_timeout / 2):
        log.info("ws_peer_gone", extra={"why": "nothing acknowledged since the ping"})
        watched._unanswered = True
        watched.transport.abort()
        return True
    ping_again()
    return True
