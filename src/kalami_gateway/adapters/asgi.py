"""ASGI types, the few raw-ASGI responses the gateway's own layers send, and the scope
extension through which the WebSocket handler (adapters/http) reaches its socket, which
the server's protocol (adapters/server) puts there."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any, Final, Protocol

from kalami_gateway.adapters.errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The ASGI scope extension holding the connection's SocketControl.
SOCKET_CONTROL: Final = "kalami.socket"


class SocketControl(Protocol):
    """What the app may know and do about its connection's socket, and, once it has
    accepted, the server's own ``receive`` and ``send`` for it."""

    def unsent_bytes(self) -> int:
        """Bytes written to the socket that the client has not taken yet."""
        ...

    def release(self) -> None:
        """Drop the connection at once, unsent bytes and all."""
        ...

    @property
    def slow(self) -> bool:
        """The server let the connection go itself: its peer did not read what it owed."""
        ...

    @property
    def unanswered(self) -> bool:
        """The server let the connection go itself: its peer did not answer a ping in time."""
        ...

    async def pause(self, seconds: float) -> None:
        """Wait ``seconds`` before reading this connection again, or less if it goes."""
        ...

    def accepted(self) -> tuple[Receive, Send]:
        """Once the accept is sent: the server's ``receive`` and ``send``."""
        ...

    def hand_off(self, serving: Coroutine[Any, Any, None]) -> bool:
        """Take the connection's message loop, to run once the app has returned (its
        suspended call chain is let go); False: the server does not, the app awaits it."""
        ...


_JSON_HEADERS = [(b"content-type", b"application/json")]


_CLOSE: Final = (b"connection", b"close")


async def send_json_error(
    send: Send, status: int, error: str, close: bool = False, code: str | None = None
) -> None:
    """A complete ``{"error": ..., "code": ...}`` JSON response (adapters/errors.py; ``code``
    defaults to the status's); ``close``: and the client connection is closed after it
    (uvicorn honours ``Connection: close``)."""
    body = error_body(status, error, code)
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if close:
        headers.append(_CLOSE)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
