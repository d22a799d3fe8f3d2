"""The ``/api`` pass-through: a raw ASGI reverse proxy on one pool of upstream connections.

Measured (issue 3, bench/README.md): Litestar's routing and a general-purpose HTTP client cost
more per request than the proxy's whole budget, so this path bypasses both: headers are
forwarded as the raw bytes uvicorn hands over, and the lean client in ``upstream.py`` speaks
HTTP/1.1 to the backend. Bodies stream both ways unchanged; small ones (with a known length)
go in one write.

Safety (issue 16): an upstream connection is reused only after a complete exchange that was
not a 5xx, and not after sitting idle long enough for the backend to close it (the rules are
stated in ``upstream.py``); a large or chunked body is copied by a task of its own while
the response is awaited, so an early answer from the backend is relayed at once and the
connection closed unless the body then finished; every wait has a deadline (a free
connection, the client's next body bytes, the backend taking them, the response); a request
is sent twice only when that is provably harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Final
from urllib.parse import urlsplit

from kalami_gateway.adapters.asgi import Receive, Scope, Send, send_json_error
from kalami_gateway.adapters.http_checks import TrustedPeers, climbs_out
from kalami_gateway.adapters.upstream import (
    IDLE_LIMIT,
    PoolExhausted,
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
# What a client says about where a request came from. Believed (forwarded) only from a peer in
# TRUSTED_PROXIES; from anyone else it is a forgery and is dropped. X-Forwarded-For/-Proto/
# -Host are then set by the gateway itself.
_CLIENT_CLAIMS: Final = frozenset(
    {
        b"forwarded",
        b"x-real-ip",
        b"x-forwarded-prefix",
        b"x-forwarded-port",
        b"x-forwarded-ssl",
        b"x-forwarded-scheme",
        b"x-forwarded-server",
        b"x-forwarded-uri",
        b"x-original-url",
        b"x-original-uri",
        b"x-original-host",
        b"x-rewrite-url",
        b"x-client-ip",
        b"x-cluster-client-ip",
        b"true-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
    }
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
_NOT_FORWARDED_UP_UNTRUSTED: Final = _NOT_FORWARDED_UP | _CLIENT_CLAIMS
# Date and Server describe the hop: uvicorn adds its own Date, and two would be sent.
_NOT_FORWARDED_DOWN: Final = _HOP_BY_HOP | {b"date", b"server", b"x-request-id"}
# A 204 has no body and a 304's Content-Length describes another response; forwarded, either
# would make uvicorn wait for body bytes that never come.
_NOT_FORWARDED_DOWN_BODILESS: Final = _NOT_FORWARDED_DOWN | {b"content-length"}
# Sent again on a fresh connection only these, and only when a kept-alive connection closed
# before one byte of answer (RFC 9110 9.2.2; a POST must never reach the backend twice).
_RETRYABLE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
# Bodies up to this size (with a Content-Length) are read whole and sent in one write.
SMALL_BODY: Final = 256 * 1024


class BadRequest(Exception):
    """A request the gateway refuses to forward (400); the message says why."""


class ClientGone(Exception):
    """The client disconnected before its exchange finished."""


class ClientStalled(Exception):
    """The client stopped sending its request body."""


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
        idle_limit: float = IDLE_LIMIT,
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
        self._trusted = TrustedPeers(trusted_proxies)
        self._observe_latency = observe_latency
        self._record_error = record_error
        self._pool_size = pool_size
        self._idle_limit = idle_limit
        self._pool: UpstreamPool | None = None

    @property
    def pool(self) -> UpstreamPool | None:
        return self._pool

    async def start(self) -> None:
        """Create the connection pool (connections open on first use)."""
        if self._pool is None:
            self._pool = UpstreamPool(
                self._host, self._port, self._pool_size, self._timeout, self._tls, self._idle_limit
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
        try:
            head, body_length, chunked = self._request_head(scope, request_id)
        except BadRequest as exc:
            await send_json_error(send, 400, str(exc))
            return
        body: bytes | None = None
        if body_length is not None and body_length <= SMALL_BODY:
            try:
                body = await _read_body(receive, self._timeout) if body_length else None
            except ClientGone:
                return
            except ClientStalled:
                await send_json_error(send, 408, "Request body timed out", close=True)
                return
        streamed = body is None and (chunked or (body_length or 0) > 0)
        method: str = scope["method"]
        is_head = method == "HEAD"
        started = time.perf_counter()
        conn: UpstreamConnection | None = None
        pump: _BodyPump | None = None
        try:
            try:
                for attempt in (1, 2):
                    conn = await pool.acquire(self._timeout, fresh=attempt == 2)
                    conn.begin(
                        head + body if body else head, is_head, request_complete=not streamed
                    )
                    if streamed:
                        pump = _BodyPump(receive, conn, chunked, body_length, self._timeout)
                    try:
                        response = await self._response(conn, pump)
                        break
                    except UpstreamTimeout:
                        raise
                    except UpstreamError:
                        # Sent again only if nothing can have happened at the backend twice:
                        # an idempotent request, no body in flight, on a kept-alive connection
                        # the backend closed without one byte of answer.
                        if (
                            attempt == 2
                            or streamed
                            or not conn.reused
                            or conn.received_any
                            or method not in _RETRYABLE_METHODS
                        ):
                            raise
                        pool.release(conn)
                        conn = None
            except PoolExhausted:
                self._record_error(BackendErrorKind.UNREACHABLE)
                log.warning("proxy_pool_exhausted")
                await send_json_error(send, 503, "Backend busy: no connection free")
                return
            except UpstreamTimeout:
                self._record_error(BackendErrorKind.TIMEOUT)
                await send_json_error(send, 504, "Backend timed out")
                return
            except UpstreamError as exc:
                self._record_error(BackendErrorKind.UNREACHABLE)
                log.warning("proxy_backend_unavailable", extra={"error": str(exc)})
                await send_json_error(send, 502, "Backend service unavailable")
                return
            except ClientStalled:
                await send_json_error(send, 408, "Request body timed out", close=True)
                return
            except ClientGone:
                return
            self._observe_latency(time.perf_counter() - started)
            await self._relay(response, receive, send, pump)
        finally:
            # Whatever happened (cancellation included): the body copy stops, the slot goes
            # back, and the connection is pooled only if its exchange was complete.
            if pump is not None:
                await pump.stop()
            if conn is not None:
                pool.release(conn)

    async def _response(self, conn: UpstreamConnection, pump: _BodyPump | None) -> UpstreamResponse:
        """The response head. The deadline runs from the end of the request body: an answer
        cannot be expected before it, but one that comes early is taken at once."""
        if pump is not None:
            early = conn.response_head
            await asyncio.wait((early, pump.sent), return_when=asyncio.FIRST_COMPLETED)
            if not early.done():
                pump.sent.result()  # the body failed: the client left or stalled, or the backend
        return await conn.head_within(self._timeout)

    def _request_head(self, scope: Scope, request_id: str) -> tuple[bytes, int | None, bool]:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        rest = raw_path[len(b"/api") :] or b"/"
        if climbs_out(rest):
            raise BadRequest("The path climbs out of /api with dot-segments")
        target = self._base_path + rest
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
        client = scope.get("client")
        trusted = client is not None and client[0] in self._trusted
        dropped = _not_forwarded(
            headers, _NOT_FORWARDED_UP if trusted else _NOT_FORWARDED_UP_UNTRUSTED
        )
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
        peer = client[0].encode() if client else b""
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

    async def _relay(
        self, response: UpstreamResponse, receive: Receive, send: Send, pump: _BodyPump | None
    ) -> None:
        bodiless = response.status in (204, 304)
        dropped = _not_forwarded(
            response.headers, _NOT_FORWARDED_DOWN_BODILESS if bodiless else _NOT_FORWARDED_DOWN
        )
        headers = [
            (name, value)
            for name, value in response.headers
            if (lower := name.lower()) not in dropped
            and not lower.startswith(b"proxy-")
            # CORS is the gateway's to answer (the edge adds its own).
            and not lower.startswith(b"access-control-")
        ]
        if response.complete:
            body = response.body()
            violation = response.violation
            if violation is not None:
                # Bytes the framing cannot account for came with it: nothing of it is trusted.
                self._record_error(BackendErrorKind.UNREACHABLE)
                log.warning("proxy_backend_protocol_error", extra={"error": violation})
                await send_json_error(send, 502, "Backend service unavailable")
                return
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        # While the body copy runs it is the one reading from the client; then a watcher is.
        watcher: asyncio.Task[None] | None = None
        if pump is None:
            gone = asyncio.Event()
            watcher = asyncio.create_task(_watch_disconnect(receive, gone))
        else:
            gone = pump.gone
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
            if watcher is not None:
                watcher.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _BodyPump:
    """Copies a streamed request body to the backend, bounded in time both ways, then watches
    for the client leaving. ``sent`` resolves when the body is all written (or fails)."""

    def __init__(
        self,
        receive: Receive,
        conn: UpstreamConnection,
        chunked: bool,
        length: int | None,
        timeout: float,
    ) -> None:
        self._receive = receive
        self._conn = conn
        self._chunked = chunked
        self._length = length
        self._timeout = timeout
        self.gone = asyncio.Event()
        self.sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._copy()
        except ClientGone as exc:
            self.gone.set()
            self.sent.set_exception(exc)
            return
        except Exception as exc:  # handed to whoever awaits `sent`
            self.sent.set_exception(exc)
        else:
            self.sent.set_result(None)
        await _watch_disconnect(self._receive, self.gone)

    async def _copy(self) -> None:
        conn = self._conn
        written = 0
        async for chunk in _stream_body(self._receive, self._timeout):
            conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self._chunked else chunk)
            written += len(chunk)
            await conn.drain(self._timeout)
        if self._chunked:
            conn.write(b"0\r\n\r\n")
        # Only now is the exchange's request side complete (and only if the lengths agree).
        conn.request_complete = self._chunked or written == self._length

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.sent.done() and not self.sent.cancelled():
            self.sent.exception()  # retrieved: a failure was already acted on, or is moot
        else:
            self.sent.cancel()


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


async def _next_message(receive: Receive, stall_limit: float) -> tuple[bytes, bool]:
    """The client's next body bytes and whether more follow, within ``stall_limit`` seconds."""
    try:
        async with asyncio.timeout(stall_limit):
            message = await receive()
    except TimeoutError:
        raise ClientStalled("the client sent no body bytes within the timeout") from None
    if message["type"] == "http.disconnect":
        raise ClientGone("client disconnected while sending the body")
    return message.get("body", b""), message.get("more_body", False)


async def _read_body(receive: Receive, stall_limit: float) -> bytes:
    parts: list[bytes] = []
    while True:
        chunk, more = await _next_message(receive, stall_limit)
        parts.append(chunk)
        if not more:
            return parts[0] if len(parts) == 1 else b"".join(parts)


async def _stream_body(receive: Receive, stall_limit: float) -> AsyncIterator[bytes]:
    while True:
        chunk, more = await _next_message(receive, stall_limit)
        if chunk:
            yield chunk
        if not more:
            return


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return
