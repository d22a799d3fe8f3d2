"""The ``/ws`` endpoint: a thin Litestar adapter between WebSocket frames and the domain service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final, cast
from urllib.parse import unquote_plus

import msgspec
import structlog
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.handlers import WebsocketRouteHandler
from opentelemetry import context as otel_context
from opentelemetry import trace

from kalami_gateway.adapters.asgi import SOCKET_CONTROL, Receive, Scope, Send, SocketControl
from kalami_gateway.adapters.http.checks import TrustedPeers
from kalami_gateway.adapters.tracing import CONNECTION_ID, OtelTracing
from kalami_gateway.application.connections import Connection
from kalami_gateway.application.service import GatewayService
from kalami_gateway.domain.auth import answered_subprotocol, handshake_token, same_origin
from kalami_gateway.domain.ports import ClientChannel
from kalami_gateway.domain.protocol import AudioFrames, Outbound, encode_server_message

log = logging.getLogger(__name__)

INTERNAL_ERROR = 1011
# The close reasons of the server protocol's own closes (kalami_websocket_closed_total).
PROTOCOL_CLOSES: Final = {1002: "protocol_error", 1007: "protocol_error", 1009: "message_too_big"}


class SendLimits(msgspec.Struct, frozen=True):
    """Slow consumers: past ``buffer_bytes`` of unsent data (messages waiting to be sent plus
    bytes the socket has not taken), or a send waiting longer than ``timeout`` seconds on the
    socket's flow control, the connection is let go."""

    buffer_bytes: int = 4 << 20
    timeout: float = 10.0


class SocketChannel(ClientChannel):
    """One accepted WebSocket as the domain's ClientChannel, sending through the server's
    ASGI ``send`` (see ``SocketControl.accepted``).

    Every message is a text frame but a reply's audio for a client that asked for it in binary
    (``AudioFrames``): its ``audio_start`` text frame, then its binary frames. Those are the
    only binary frames the gateway ever sends, and nothing else is sent between them: a message
    sent meanwhile (a pong, a push) waits for the last frame."""

    __slots__ = ("_audio_out", "_closed", "_control", "_limits", "_pending", "_send", "slow")

    def __init__(
        self, send: Send, control: SocketControl | None, limits: SendLimits | None = None
    ) -> None:
        self._send = send
        # None when the server is not the gateway's own (plain uvicorn, a test client): then
        # only the queued messages are counted.
        self._control = control
        self._closed = False
        self._limits = limits or SendLimits()
        self._pending = 0  # bytes of messages waiting for their send to complete
        self._audio_out: asyncio.Event | None = None  # set when a reply's audio frames are out
        self.slow = False

    async def send(self, message: Outbound) -> None:
        if self._closed:
            return
        while self._audio_out is not None:  # nothing between an audio_start and its frames
            await self._audio_out.wait()
        if isinstance(message, AudioFrames):
            await self._send_audio(message)
            return
        text = encode_server_message(message)
        await self._send_frame({"type": "websocket.send", "text": text}, len(text))

    async def _send_audio(self, message: AudioFrames) -> None:
        """``audio_start``, then the audio in binary frames (each counted against the send
        buffer as it goes, as a text message is)."""
        out = self._audio_out = asyncio.Event()
        try:
            start = encode_server_message(message.start())
            await self._send_frame({"type": "websocket.send", "text": start}, len(start))
            for frame in message.frames():
                await self._send_frame({"type": "websocket.send", "bytes": frame}, len(frame))
        finally:
            self._audio_out = None
            out.set()

    async def _send_frame(self, event: dict[str, Any], size: int) -> None:
        if self._closed:
            return
        unsent = self._control.unsent_bytes() if self._control is not None else 0
        if self._pending + size + unsent > self._limits.buffer_bytes:
            self._release("send buffer full")
            return
        self._pending += size
        try:
            if unsent == 0 and self._control is not None:
                # Nothing waits in the socket: uvicorn's send cannot block on flow control, so
                # no deadline is armed (a timer per message cost ~3 µs of a ~17 µs ping).
                await self._send(event)
            else:
                async with asyncio.timeout(self._limits.timeout):
                    await self._send(event)
        except TimeoutError:
            self._release("send timed out")
        except (WebSocketDisconnect, OSError, RuntimeError):
            # The peer is gone (uvicorn raises ClientDisconnected, an OSError, to a sender).
            self._closed = True
        finally:
            self._pending -= size

    async def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError, TimeoutError):
            async with asyncio.timeout(self._limits.timeout):
                await self._send({"type": "websocket.close", "code": code, "reason": reason})

    def _release(self, why: str) -> None:
        """A slow consumer: let the socket go without waiting for it (4006 in spirit; a
        client that does not read would never see the close frame)."""
        if self._closed:
            return
        self._closed = True
        self.slow = True
        log.warning("ws_slow_consumer", extra={"why": why})
        if self._control is not None:
            self._control.release()


def query_values(query_string: bytes) -> tuple[str | None, str | None]:
    """The ``token`` and ``resume`` query parameters (the first of each), percent-decoded.

    Read straight from the raw query: building Litestar's query MultiDict cost ~4% of a
    connect's CPU, for two values.
    """
    token = resume = None
    for pair in query_string.split(b"&"):
        name, _, value = pair.partition(b"=")
        if name == b"token" and token is None:
            token = unquote_plus(value.decode("latin-1"))
        elif name == b"resume" and resume is None:
            resume = unquote_plus(value.decode("latin-1"))
    return token, resume


def handshake_values(scope: Scope) -> tuple[str | None, str | None, str | None]:
    """The token, the resume token and the subprotocol to answer with, of a handshake.

    The token may come as ``?token=``, as ``Authorization: Bearer`` (native clients: a URL
    ends up in proxy and load-balancer access logs and crash reports, a header does not) or
    as a ``bearer.<token>`` entry of ``Sec-WebSocket-Protocol`` (browsers can set no other
    header); of more than one, the first in that order (``handshake_token``). Only
    ``kalami.v1`` is ever answered, never the bearer entry (``answered_subprotocol``).
    """
    query_token, resume = query_values(scope["query_string"])
    offered: list[str] = scope.get("subprotocols") or []
    authorization = [
        value.decode("latin-1") for name, value in scope["headers"] if name == b"authorization"
    ]
    token = handshake_token(query_token, authorization, offered)
    return token, resume, answered_subprotocol(offered)


class SameOrigin:
    """Tells a browser's request from a page of the gateway's own (the playground) apart from
    another site's: its ``Origin`` has the scheme, host and port the request was sent to.

    Where it was sent to is the request's scheme and ``Host``; behind a proxy in
    TRUSTED_PROXIES, its ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` (the first of a
    list: the client's hop), as the ``/api`` proxy believes them. From anyone else those
    headers are ignored. A browser cannot set them on a page's requests anyway: they only
    matter for a page served through the operator's proxy.
    """

    __slots__ = ("_trusted",)

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        self._trusted = TrustedPeers(trusted_proxies)

    def judge(self, scope: Scope) -> tuple[str | None, bool]:
        """The request's ``Origin`` (the first; None without one) and whether it is the
        gateway's own site (never with more than one Origin, or more than one Host)."""
        origin = host = forwarded_proto = forwarded_host = None
        origins = hosts = 0
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = origin or value
                origins += 1
            elif name == b"host":
                host = value
                hosts += 1
            elif name == b"x-forwarded-proto":
                forwarded_proto = forwarded_proto or value
            elif name == b"x-forwarded-host":
                forwarded_host = forwarded_host or value
        if origin is None:
            return None, False
        text = origin.decode("latin-1")
        if origins > 1:
            return text, False
        scheme: str = scope.get("scheme", "http")
        client = scope.get("client")
        if client is not None and client[0] in self._trusted:
            if forwarded_proto:
                scheme = _first(forwarded_proto).decode("latin-1")
            if forwarded_host:
                host, hosts = _first(forwarded_host), 1
        if host is None or hosts > 1:
            return text, False
        return text, same_origin(text, scheme, host.decode("latin-1"))


def _first(listed: bytes) -> bytes:
    """The first entry of a forwarding header's list: the hop nearest the client."""
    return listed.split(b",", 1)[0].strip()


async def _gone(*_: object) -> Any:
    raise WebSocketDisconnect(detail="the connection is over")


def ws_route(
    provide_service: Callable[[], GatewayService],
    send_limits: SendLimits | None = None,
    origins: SameOrigin | None = None,
    tracing: OtelTracing | None = None,
) -> WebsocketRouteHandler:
    """The ``/ws`` handler, bound to the service at the composition root.

    The service is a closure, not a Litestar dependency: resolving and validating handler
    kwargs cost ~10% of a connect's CPU in the profile, for a value that never changes.
    ``origins`` tells the gateway's own pages, which are always let in, from others.
    ``tracing`` (None: off): each connection is a span, current while it is served, so that
    its sessions and turns are its children; what it leaves open is ended with it.
    """
    own_site = origins or SameOrigin()

    @websocket("/ws")
    async def serve_connection(socket: WebSocket[Any, Any, Any]) -> None:
        """One connection: judged, accepted, opened; then its messages (``serve_messages``),
        handed to the server's protocol where it takes them (the gateway's own engine: run
        once this handler and Litestar's chain above it have returned), else served here."""
        try:
            service = provide_service()
            # The token is read here, not declared as a parameter: a missing required parameter
            # makes Litestar refuse before accept, and the client would see HTTP 403, not 4001.
            # Whichever way it came, it is judged once, by the service, after the accept.
            token, resume, subprotocol = handshake_values(cast("Scope", socket.scope))
            # A page of the gateway's own (the playground) opens its socket whatever
            # CORS_ORIGINS says, as Centrifugo allows same-origin: the service is told of no
            # Origin to judge. Another site's page is judged by CORS_ORIGINS (else 4008).
            origin, own = own_site.judge(cast("Scope", socket.scope))
            if own:
                origin = None
            await socket.accept(subprotocols=subprotocol)
            control = cast(
                "SocketControl | None", (socket.scope.get("extensions") or {}).get(SOCKET_CONTROL)
            )
            receive: Receive
            send: Send
            if control is not None:
                # The scope's headers, query and subprotocols (tokens, all three) are emptied.
                try:
                    receive, send = control.accepted()
                except ConnectionResetError:  # gone before its accept: nothing was opened
                    return
            else:  # not served by the gateway's server: through Litestar's socket
                receive, send = socket.receive, socket.send  # type: ignore[assignment]
            channel = SocketChannel(send, control, send_limits)
            conn = await service.open(channel, token, origin, resume)
            if conn is None:
                return
            serving = serve_messages(service, conn, channel, receive, control, tracing)
            if control is None or not control.hand_off(serving):
                await serving
        finally:
            # Litestar's socket wraps the server's receive and send in closures that hold
            # the socket itself: a cycle that would keep the connection's protocol, and all
            # it holds, until a full collection. Nothing calls them after the handler.
            socket.receive = socket.send = _gone

    return serve_connection


async def serve_messages(
    service: GatewayService,
    conn: Connection,
    channel: SocketChannel,
    receive: Receive,
    control: SocketControl | None,
    tracing: OtelTracing | None,
) -> None:
    """One opened connection's messages, to its disconnect: each to the service, the rate
    limits' pauses, and the close reason it ends with.

    The gateway's own engine runs this after the app has returned (``SocketControl.
    hand_off``): Litestar's call chain and its connection objects (~3 KB an idle connection)
    are let go, and each message resumes a chain of three coroutines instead of ten."""
    structlog.contextvars.bind_contextvars(connection_id=conn.id)
    traced = span = None
    if tracing is not None:
        span = tracing.connection_span({CONNECTION_ID: conn.id})
        traced = otel_context.attach(trace.set_span_in_context(span))
    reason = "client_closed"
    try:
        while not conn.closed:
            event = await receive()
            if event["type"] != "websocket.receive":
                # The server's protocol closed it for a broken frame, else the client did.
                reason = PROTOCOL_CLOSES.get(event.get("code", 1000), reason)
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
                # Over its rate: read it later. The server reads nothing more from this
                # socket until the next receive(), so TCP pushes back on the client; nothing
                # is lost. A socket that goes meanwhile ends the pause: the messages still
                # waiting are handled at once and the peer let go.
                if control is not None:
                    await control.pause(pause)
                else:
                    await asyncio.sleep(pause)
    except (WebSocketDisconnect, OSError):
        reason = "connection_lost"
    except Exception:
        reason = "internal_error"
        log.exception("ws_handler_failed", extra={"connection_id": conn.id})
        await conn.channel.close(INTERNAL_ERROR, "Internal error")
    finally:
        # Let go for not reading: by the channel (the app's messages) or by the protocol
        # (the pongs it owed).
        slow = channel.slow or (control is not None and control.slow)
        reason = "slow_consumer" if slow else reason
        if control is not None and control.unanswered:
            reason = "ping_timeout"
        try:
            await service.disconnect(conn, reason)
        finally:
            if tracing is not None and span is not None and traced is not None:
                tracing.release(conn.id)
                # The gateway's own reason where it let the connection go itself (a 1009,
                # a drain, an expired token), else how the loop saw the socket end.
                span.set_attribute("kalami.close_reason", conn.closed_for or reason)
                span.end()
                otel_context.detach(traced)
