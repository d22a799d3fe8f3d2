"""The ``/api`` pass-through: a raw ASGI reverse proxy on one pool of upstream connections.

Measured (issue 3, bench/README.md): Litestar's routing and a general-purpose HTTP client cost
more per request than the proxy's whole budget, so this path bypasses both: headers are
forwarded as the raw bytes uvicorn hands over, and the lean client in ``upstream.py`` speaks
HTTP/1.1 to the backend. Bodies stream both ways unchanged; small ones (with a known length)
go in one write.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Final
from urllib.parse import urlsplit

from kalami_gateway.adapters.asgi import Receive, Scope, Send, send_json_error
from kalami_gateway.adapters.upstream import (
    UpstreamConnection,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)
from kalami_gateway.domain.ports import BackendErrorKind

log = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 7.6.1), and what only this hop may set.
_HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
_NOT_FORWARDED_UP: Final = _HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",  # uvicorn answers 100-continue itself when the body is read
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-request-id",
}
# Date and Server describe the hop: uvicorn adds its own Date, and two would be sent.
_NOT_FORWARDED_DOWN: Final = _HOP_BY_HOP | {b"date", b"server", b"x-request-id"}
# Bodies up to this size (with a Content-Length) are read whole and sent in one write.
SMALL_BODY: Final = 256 * 1024


class ApiProxy:
    """Forwards ``/api/{path}?{query}`` to ``{backend_url}/{path}?{query}``."""

    def __init__(
        self,
        backend_url: str,
        timeout_seconds: float,
        trusted_proxies: Iterable[str],
        observe_latency: Callable[[float], None],
        record_error: Callable[[BackendErrorKind], None],
        pool_size: int = 512,
    ) -> None:
        url = urlsplit(backend_url)
        tls = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port or (443 if tls else 80)
        default_port = self._port == (443 if tls else 80)
        self._host_header = (self._host if default_port else f"{self._host}:{self._port}").encode()
        self._base_path = url.path.rstrip("/").encode()
        self._tls = ssl.create_default_context() if tls else None
        self._timeout = timeout_seconds
        self._trusted = frozenset(trusted_proxies)
        self._observe_latency = observe_latency
        self._record_error = record_error
        self._pool_size = pool_size
        self._pool: UpstreamPool | None = None

    @property
    def pool(self) -> UpstreamPool | None:
        return self._pool

    async def start(self) -> None:
        """Create the connection pool (connections open on first use)."""
        if self._pool is None:
            self._pool = UpstreamPool(
                self._host, self._port, self._pool_size, self._timeout, self._tls
            )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        pool = self._pool
        if pool is None:
            await send_json_error(send, 503, "Gateway is starting or stopping")
            return
        head, body_length, chunked = self._request_head(scope, request_id)
        body: bytes | None = None
        if body_length is not None and body_length <= SMALL_BODY:
            try:
                body = await _read_body(receive) if body_length else None
            except ConnectionAbortedError:
                return  # the client left before sending its body
        streamed = body is None and (chunked or (body_length or 0) > 0)
        is_head = scope["method"] == "HEAD"
        started = time.perf_counter()
        conn: UpstreamConnection | None = None
        try:
            try:
                for attempt in (1, 2):
                    conn = await pool.acquire(fresh=attempt == 2)
                    try:
                        response = await self._exchange(
                            conn, head, body, streamed, chunked, is_head, receive
                        )
                        break
                    except UpstreamTimeout:
                        raise
                    except UpstreamError:
                        # A kept-alive connection the backend had just closed: the request
                        # got no answer, so it is safe to send again on a fresh one, once.
                        if attempt == 2 or streamed or conn.received_any:
                            raise
                        pool.release(conn)
                        conn = None
            except UpstreamTimeout:
                self._record_error(BackendErrorKind.TIMEOUT)
                await send_json_error(send, 504, "Backend timed out")
                return
            except UpstreamError as exc:
                self._record_error(BackendErrorKind.UNREACHABLE)
                log.warning("proxy_backend_unavailable", extra={"error": str(exc)})
                await send_json_error(send, 502, "Backend service unavailable")
                return
            except ConnectionAbortedError:
                return  # the client left while its body was streaming
            self._observe_latency(time.perf_counter() - started)
            await self._relay(response, receive, send)
        finally:
            # Whatever happened (cancellation included): the slot goes back, and the
            # connection is kept only if its exchange finished cleanly.
            if conn is not None:
                pool.release(conn)

    async def _exchange(
        self,
        conn: UpstreamConnection,
        head: bytes,
        body: bytes | None,
        streamed: bool,
        chunked: bool,
        is_head: bool,
        receive: Receive,
    ) -> UpstreamResponse:
        response_head = conn.begin(head + body if body else head, is_head)
        if streamed:
            async for chunk in _stream_body(receive):
                conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await conn.drain()
            if chunked:
                conn.write(b"0\r\n\r\n")
        try:
            async with asyncio.timeout(self._timeout):
                return await response_head
        except TimeoutError:
            raise UpstreamTimeout("no response within the timeout") from None

    def _request_head(self, scope: Scope, request_id: str) -> tuple[bytes, int | None, bool]:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        target = self._base_path + (raw_path[len(b"/api") :] or b"/")
        query: bytes = scope["query_string"]
        if query:
            target += b"?" + query
        parts = [
            scope["method"].encode(),
            b" ",
            target,
            b" HTTP/1.1\r\nhost: ",
            self._host_header,
            b"\r\n",
        ]
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        dropped = _not_forwarded(headers, _NOT_FORWARDED_UP)
        incoming_xff = incoming_proto = incoming_host = host = None
        body_length: int | None = None
        chunked = False
        for name, value in headers:
            if name in dropped or name.startswith(b"proxy-"):
                if name == b"content-length":
                    try:
                        body_length = int(value)
                    except ValueError:
                        body_length = None
                elif name == b"transfer-encoding":
                    chunked = True
                elif name == b"host":
                    host = value
                elif name == b"x-forwarded-for":
                    incoming_xff = value if incoming_xff is None else incoming_xff + b", " + value
                elif name == b"x-forwarded-proto":
                    incoming_proto = value
                elif name == b"x-forwarded-host":
                    incoming_host = value
                continue
            parts += (name, b": ", value, b"\r\n")
        client = scope.get("client")
        peer = client[0].encode() if client else b""
        trusted = client is not None and client[0] in self._trusted
        forwarded_for = incoming_xff + b", " + peer if trusted and incoming_xff else peer
        proto = (
            incoming_proto if trusted and incoming_proto else scope.get("scheme", "http").encode()
        )
        parts += (b"x-forwarded-for: ", forwarded_for, b"\r\nx-forwarded-proto: ", proto, b"\r\n")
        forwarded_host = incoming_host if trusted and incoming_host else host
        if forwarded_host:
            parts += (b"x-forwarded-host: ", forwarded_host, b"\r\n")
        parts += (b"x-request-id: ", request_id.encode(), b"\r\n")
        if chunked and body_length is None:
            parts.append(b"transfer-encoding: chunked\r\n")
        elif body_length is not None:
            parts += (b"content-length: ", str(body_length).encode(), b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts), body_length, chunked and body_length is None

    async def _relay(self, response: UpstreamResponse, receive: Receive, send: Send) -> None:
        dropped = _not_forwarded(response.headers, _NOT_FORWARDED_DOWN)
        headers = [
            (name, value)
            for name, value in response.headers
            if (lower := name.lower()) not in dropped and not lower.startswith(b"proxy-")
        ]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        if response.complete:
            await send({"type": "http.response.body", "body": response.body(), "more_body": False})
            return
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, gone))
        try:
            async for chunk in response.chunks(self._timeout):
                if gone.is_set():
                    return  # the client left: the connection is not reusable and gets closed
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            # Headers are out; the only honest signal left is an aborted body.
            log.warning("proxy_upstream_body_failed", extra={"error": str(exc)})
            return
        finally:
            watcher.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _not_forwarded(
    headers: list[tuple[bytes, bytes]], always: frozenset[bytes]
) -> frozenset[bytes]:
    """``always``, plus the headers a ``Connection`` header names (they are hop-by-hop too)."""
    named = [
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    ]
    return always.union(named) if named else always


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("client disconnected while sending the body")
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


async def _stream_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("client disconnected while sending the body")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return
