"""The connection's socket as the app sees it (the ``kalami.socket`` scope extension that
``LivelyWebSocketProtocol.handle_connect`` puts there): what it may know and do about the
socket, and the server's own ``receive`` and ``send`` once it has accepted. The WebSocket
handler (adapters/http) sees it through the ``SocketControl`` Protocol of adapters/asgi.py.
The native engine's protocol is its own socket control (``native/socket_control.py``); the
app's rate-limit pause is one for both engines (``pause_reads``, ``socket_gone``)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from websockets.datastructures import Headers
from websockets.http11 import Request

from kalami_gateway.adapters import asgi
from kalami_gateway.adapters.asgi import Receive, Send

if TYPE_CHECKING:
    from kalami_gateway.adapters.server.ws_protocol import LivelyWebSocketProtocol


class SocketControl:
    """What the app may know and do about its connection's socket, and, once it has accepted,
    the server's own ``receive`` and ``send`` for it.

    Litestar routes the connection and sends the accept; after that the gateway's message
    loop calls the protocol directly. Litestar's WebSocket wraps both calls to track a
    connection state the gateway tracks itself, and its exception middleware wraps every send:
    ~2 µs of a ~20 µs ping round trip on the bench's empty app (bench/README.md, "What one
    ping costs")."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: LivelyWebSocketProtocol) -> None:
        self._protocol = protocol

    def unsent_bytes(self) -> int:
        """Bytes written to the socket that the client has not taken yet."""
        return self._protocol.transport.get_write_buffer_size()

    def release(self) -> None:
        """Drop the connection at once, unsent bytes and all (a client that stopped reading
        would never take a close frame either)."""
        self._protocol.transport.abort()

    @property
    def slow(self) -> bool:
        """The protocol let the connection go itself: its peer did not read what it owed
        it (pongs) past the send buffer (a slow consumer, as the app's own rule says)."""
        return self._protocol._slow

    @property
    def unanswered(self) -> bool:
        """The protocol let the connection go itself: no pong within the ping timeout, or a
        peer whose network vanished."""
        return self._protocol._unanswered

    async def pause(self, seconds: float) -> None:
        """Wait ``seconds`` before reading this connection again (a rate limit), or less if
        its socket goes meanwhile (``pause_reads``)."""
        await pause_reads(self._protocol, seconds)

    def accepted(self) -> tuple[Receive, Send]:
        """Call once the accept is sent and the handshake's headers and query are read: the
        server's ``receive`` and ``send``.

        What only the handshake needed is let go (an idle connection would otherwise keep it
        for its whole life, ~2.5 KB): uvicorn's Request and Response; the headers and the path
        (with the token in its query) of the Request, which websockets' parser generator still
        holds in its suspended frame; and the scope's header list, query string and
        subprotocols (a browser's token comes as one). The app sees an empty header list,
        query and subprotocol list from then on."""
        protocol = self._protocol
        if not protocol.handshake_complete:
            # uvicorn drops an accept on a closing socket without a word.
            raise accept_missing(protocol.transport)
        request: Request | None = vars(protocol).pop("request", None)
        if request is not None:
            request.headers = _NO_HEADERS
            request.path = ""
        vars(protocol).pop("response", None)
        forget_handshake(protocol.scope)  # type: ignore[arg-type]
        # uvicorn's own types are narrower TypedDicts; the calls are plain ASGI.
        return cast(Receive, protocol.receive), cast(Send, protocol.send)

    def hand_off(self, serving: Coroutine[Any, Any, None]) -> bool:
        """Not taken: uvicorn's protocol ends the connection when the app returns, so the
        app awaits its message loop itself (the native engine takes it)."""
        return False


# The face the WebSocket handler sees (checked here by mypy).
_FACE: type[asgi.SocketControl] = SocketControl

# What an accepted connection's handshake Request holds instead of its headers (never written).
_NO_HEADERS: Final = Headers()


def accept_missing(transport: asyncio.Transport) -> Exception:
    """Why ``accepted()`` (either engine's) is refused before the accept is out: the accept
    was dropped on a closing socket, so the client left (a handshake timeout of its own)
    while the app was still deciding, a reset; or the app asked too early, a fault."""
    if transport.is_closing():
        return ConnectionResetError("the client left before the accept was sent")
    return RuntimeError("the WebSocket is not accepted yet")


def forget_handshake(scope: dict[str, Any]) -> None:
    """Once accepted (either engine): the scope's header list, query string and
    subprotocols let go (a token comes in one of them); the app sees them empty from then
    on."""
    scope["headers"] = []
    scope["query_string"] = b""
    scope["subprotocols"] = []


class Pausable(Protocol):
    """What a WebSocket protocol of either engine keeps for the app's pauses."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    _lost: bool  # connection_lost has run
    _pausing: asyncio.Future[None] | None  # the app's rate-limit pause, if waiting


async def pause_reads(protocol: Pausable, seconds: float) -> None:
    """The app's rate limit on either engine (``SocketControl.pause``): wait ``seconds``
    before it reads the connection again, or less if the socket goes meanwhile
    (``socket_gone``): a peer that has gone is let go at once, its messages still waiting are
    handled without further pauses."""
    if protocol._lost:
        return
    loop = protocol.loop
    waiter: asyncio.Future[None] = loop.create_future()
    protocol._pausing = waiter
    timer = loop.call_later(seconds, wake, waiter)
    try:
        await waiter
    finally:
        timer.cancel()
        protocol._pausing = None


def socket_gone(protocol: Pausable) -> None:
    """The socket has gone (``connection_lost``): no pause from now on, and one waiting ends
    at once."""
    protocol._lost = True
    if protocol._pausing is not None:
        wake(protocol._pausing)


def wake(waiter: asyncio.Future[None]) -> None:
    """End a pause: on its timer, or at once when the socket goes (``socket_gone``)."""
    if not waiter.done():
        waiter.set_result(None)
