"""The ``/ws`` endpoint: a thin Litestar adapter between WebSocket frames and the domain service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_plus

import structlog
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.handlers import WebsocketRouteHandler
from litestar.types import WebSocketSendEvent

from kalami_gateway.application.service import GatewayService
from kalami_gateway.domain.ports import ClientChannel
from kalami_gateway.domain.protocol import ServerMessage, encode_server_message

log = logging.getLogger(__name__)

INTERNAL_ERROR = 1011


class LitestarChannel(ClientChannel):
    """One Litestar WebSocket as the domain's ClientChannel."""

    __slots__ = ("_closed", "_socket")

    def __init__(self, socket: WebSocket[Any, Any, Any]) -> None:
        self._socket = socket
        self._closed = False

    async def send(self, message: ServerMessage) -> None:
        if self._closed:
            return
        try:
            event: WebSocketSendEvent = {
                "type": "websocket.send",
                "text": encode_server_message(message),
                "bytes": None,
            }
            await self._socket.send(event)
        except (WebSocketDisconnect, OSError, RuntimeError):
            # The peer is gone (uvicorn raises ClientDisconnected, an OSError, to a sender).
            self._closed = True

    async def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
            await self._socket.close(code, reason)


def token_from_query(query_string: bytes) -> str | None:
    """The ``token`` query parameter (the first one), percent-decoded.

    Read straight from the raw query: building Litestar's query MultiDict cost ~4% of a
    connect's CPU, for one value.
    """
    for pair in query_string.split(b"&"):
        name, _, value = pair.partition(b"=")
        if name == b"token":
            return unquote_plus(value.decode("latin-1"))
    return None


def origin_of(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The handshake's Origin header (browsers always send one; phones usually do not)."""
    for name, value in headers:
        if name == b"origin":
            return value.decode("latin-1")
    return None


def ws_route(provide_service: Callable[[], GatewayService]) -> WebsocketRouteHandler:
    """The ``/ws`` handler, bound to the service at the composition root.

    The service is a closure, not a Litestar dependency: resolving and validating handler
    kwargs cost ~10% of a connect's CPU in the profile, for a value that never changes.
    """

    @websocket("/ws")
    async def ws_endpoint(socket: WebSocket[Any, Any, Any]) -> None:
        await serve_connection(socket, provide_service())

    return ws_endpoint


async def serve_connection(socket: WebSocket[Any, Any, Any], service: GatewayService) -> None:
    """One connection from accept to disconnect."""
    # The token is read here, not declared as a parameter: a missing required parameter
    # makes Litestar refuse before accept, and the client would see HTTP 403, not 4001.
    token = token_from_query(socket.scope["query_string"])
    await socket.accept()
    conn = await service.open(LitestarChannel(socket), token, origin_of(socket.scope["headers"]))
    if conn is None:
        return
    structlog.contextvars.bind_contextvars(connection_id=conn.id)
    reason = "client_closed"
    try:
        while not conn.closed:
            event = await socket.receive()
            if event["type"] != "websocket.receive":
                break
            text = event.get("text")
            if text is not None:
                await service.handle_text(conn, text)
                pause = service.pause_after_text(conn)
            else:
                data = event.get("bytes") or b""
                await service.handle_binary(conn, data)
                pause = service.pause_after_audio(conn, len(data))
            if pause:
                # Over its rate: read it later. uvicorn reads nothing more from this socket
                # until the next receive(), so TCP pushes back on the client; nothing is lost.
                await asyncio.sleep(pause)
    except (WebSocketDisconnect, OSError):
        reason = "connection_lost"
    except Exception:
        reason = "internal_error"
        log.exception("ws_handler_failed", extra={"connection_id": conn.id})
        await conn.channel.close(INTERNAL_ERROR, "Internal error")
    finally:
        await service.disconnect(conn, reason)
