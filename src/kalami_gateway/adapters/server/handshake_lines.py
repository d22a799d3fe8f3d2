"""How long a line of a WebSocket handshake websockets accepts: a module global of its own
(``websockets.http11.MAX_LINE_LENGTH``), raised once at start-up by ``create_app``."""

from __future__ import annotations

from typing import Final

import websockets.http11

# The handshake's request line carries the token. websockets caps a line at 8192 bytes and
# uvicorn's websockets-sansio never sends the 414 it queues (the client just times out), so
# an over-long token would hang instead of getting 4002. 16 KiB lets every token up to the
# auth policy's 8 KB cap reach the app and be refused there with a close code.
# (This is websockets' documented WEBSOCKETS_MAX_LINE_LENGTH, applied after import.)
HANDSHAKE_LINE_LIMIT: Final = 16384


def allow_long_handshake_lines() -> None:
    """Raise websockets' line limit to ``HANDSHAKE_LINE_LIMIT`` (never lower it: the
    environment may have set it higher). websockets reads it each time it parses a request."""
    websockets.http11.MAX_LINE_LENGTH = max(websockets.http11.MAX_LINE_LENGTH, HANDSHAKE_LINE_LIMIT)
