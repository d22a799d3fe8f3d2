"""The native engine's ``SocketControl`` (adapters/asgi.py, the ``kalami.socket`` scope
extension): the protocol is its own, with no object in between. What the app may know and
do about its connection's socket, and, once it has accepted, the protocol's own ``receive``
and ``send``. The uvicorn engine's is ``adapters/server/socket_control.py``; the rate-limit
pause is one for both (``pause_reads``)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, cast

from kalami_gateway.adapters.asgi import Receive, Send
from kalami_gateway.adapters.server.native.connection import OPEN, NativeConnection
from kalami_gateway.adapters.server.socket_control import (
    accept_missing,
    forget_handshake,
    pause_reads,
)


class OwnSocketControl(NativeConnection):
    __slots__ = ()

    def unsent_bytes(self) -> int:
        """Bytes written to the socket that the client has not taken yet."""
        return self.transport.get_write_buffer_size()

    def release(self) -> None:
        """Drop the connection at once, unsent bytes and all."""
        self.transport.abort()

    @property
    def slow(self) -> bool:
        """The protocol let the connection go itself: pongs unread past the send buffer."""
        return self._slow

    @property
    def unanswered(self) -> bool:
        """The protocol let the connection go itself: no pong in time, or a peer whose
        network vanished."""
        return self._unanswered

    async def pause(self, seconds: float) -> None:
        """Wait ``seconds`` before reading this connection again (a rate limit), or less if
        its socket goes meanwhile."""
        await pause_reads(self, seconds)

    def accepted(self) -> tuple[Receive, Send]:
        """Once the accept is sent: this protocol's own ``receive`` and ``send``; the scope's
        header list, query string and subprotocols (tokens, all three) are let go."""
        if self._phase != OPEN:
            # The answer drops an accept on a closing socket (handshake_answer).
            raise accept_missing(self.transport)
        forget_handshake(cast("dict[str, Any]", self.scope))
        return cast(Receive, self.receive), cast(Send, self.send)

    def hand_off(self, serving: Coroutine[Any, Any, None]) -> bool:
        """Take the app's message loop (``serving``), to run in the app's own task once the
        app has returned: Litestar's call chain and the connection objects it holds (~3 KB
        an idle connection) are let go, and every message resumes a shorter chain."""
        self._serving = serving
        return True
