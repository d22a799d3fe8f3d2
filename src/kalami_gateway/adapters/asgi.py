"""ASGI types and the few raw-ASGI responses the gateway's own layers send."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import msgspec

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]


_CLOSE: Final = (b"connection", b"close")


async def send_json_error(send: Send, status: int, error: str, close: bool = False) -> None:
    """A complete ``{"error": ...}`` JSON response; ``close``: and the client connection
    is closed after it (uvicorn honours ``Connection: close``)."""
    body = msgspec.json.encode({"error": error})
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if close:
        headers.append(_CLOSE)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
