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

Budgets (issue 24): a request body must keep up with a minimum pace (``BodyPace``), one client
address holds at most ``connections_per_client`` exchanges at once, and streamed bodies hold at
most ``streamed_share`` of the pool, so that bodiless and small requests always find a
connection of their own: slow uploads from many clients cannot take every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Final
from urllib.parse import urlsplit

from kalami_gateway.adapters.asgi import Receive, Scope, Send, send_json_error
from kalami_gateway.adapters.http.checks import TrustedPeers, climbs_out
from kalami_gateway.adapters.proxy.connection import (
    IDLE_LIMIT,
    PoolExhausted,
    SlotGate,
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


def streamed_share(pool_size: int) -> int:
    """How many of the pool's connections requests with a streamed body (chunked, or over
    SMALL_BODY) may hold at once: all but a quarter (rounded down), which is kept for bodiless
    and small ones. Issue 24: 520 dripping uploads held every connection, and every other
    client's request got 503."""
    return pool_size - pool_size // 4


class BadRequest(Exception):
    """A request the gateway refuses to forward (400); the message says why."""


class ClientGone(Exception):
    """The client disconnected before its exchange finished."""


class ClientStalled(Exception):
    """The client stopped sending its request body, or sent it too slowly."""


class BodyPace:
    """When the gateway stops waiting for a request body's next bytes: ``stall`` seconds after
    it starts waiting, or once the body has fallen behind ``min_rate`` bytes/s by more than
    ``grace`` seconds — whichever comes first.

    Behind means: ``t`` seconds after the reading started, fewer than
    ``min_rate * (t - grace)`` bytes have arrived. A deadline on the next bytes is exact: the
    body falls behind at ``start + grace + received / min_rate``, and each arrival moves that
    moment on. Time spent waiting for the backend to take the body does not count."""

    __slots__ = ("_behind_at", "_per_byte", "stall")

    def __init__(self, stall: float, min_rate: int, grace: float, start: float) -> None:
        self.stall = stall
        self._per_byte = 1 / min_rate if min_rate else 0.0
        self._behind_at = start + grace if min_rate else math.inf

    def deadline(self, now: float) -> float:
        """The loop time by which the next bytes must arrive."""
        behind_at = self._behind_at
        stall_at = now + self.stall
        return stall_at if stall_at < behind_at else behind_at

    def received(self, size: int) -> None:
        self._behind_at += size * self._per_byte

    def paused(self, seconds: float) -> None:
        """The gateway did not read for ``seconds`` (the backend was not taking the body)."""
        self._behind_at += seconds

    def behind(self, now: float) -> bool:
        return now >= self._behind_at


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
        connections_per_client: int = 0,
        body_min_rate: int = 0,
        body_rate_grace: float = 10.0,
    ) -> None:
        """``connections_per_client``: concurrent exchanges per client address (0: no cap);
        ``body_min_rate``, ``body_rate_grace``: the pace a request body must keep (see
        ``BodyPace``; a rate of 0: only the stall deadline)."""
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
        self._per_client = connections_per_client
        # Exchanges in flight per client address; an address leaves with its last exchange.
        self._in_flight: dict[bytes, int] = {}
        self._min_rate = body_min_rate
        self._rate_grace = body_rate_grace
        # The deadline of a body's first bytes: the pace allows no longer with none arrived.
        self._first_wait = (
            min(timeout_seconds, body_rate_grace) if body_min_rate else timeout_seconds
        )
        self._streamed_slots = SlotGate(streamed_share(pool_size))

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
            head, body_length, chunked, client = self._request_head(scope, request_id)
        except BadRequest as exc:
            await send_json_error(send, 400, str(exc))
            return
        per_client = self._per_client
        if per_client:
            held = self._in_flight.get(client, 0)
            if held >= per_client:
                log.warning("proxy_client_over_limit", extra={"client": client.decode("latin-1")})
                await send_json_error(send, 503, "Backend busy: too many requests from this client")
                return
            self._in_flight[client] = held + 1
        method: str = scope["method"]
        is_head = method == "HEAD"
        conn: UpstreamConnection | None = None
        pump: _BodyPump | None = None
        streamed_slot = False
        try:
            try:
                body: bytes | None = None
                if body_length and body_length <= SMALL_BODY:  # read whole, sent in one write
                    body = await _read_body(receive, self._first_wait, self._pace)
                streamed = body is None and (chunked or (body_length or 0) > 0)
                started = time.perf_counter()
                wait = self._timeout
                if streamed:
                    # Its share of the pool first, then a connection: both within one wait.
                    await self._streamed_slots.take(wait)
                    streamed_slot = True
                    wait = max(0.0, wait - (time.perf_counter() - started))
                for attempt in (1, 2):
                    conn = await pool.acquire(wait, fresh=attempt == 2)
                    conn.begin(
                        head + body if body else head, is_head, request_complete=not streamed
                    )
                    if streamed:
                        pump = _BodyPump(receive, conn, chunked, body_length, self._pace)
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
            if streamed_slot:
                self._streamed_slots.give()
            if per_client:
                held = self._in_flight[client] - 1
                if held:
                    self._in_flight[client] = held
                else:
                    del self._in_flight[client]

    def _pace(self, start: float) -> BodyPace:
        """The pace of a request body whose reading started at loop time ``start``."""
        return BodyPace(self._timeout, self._min_rate, self._rate_grace, start)

    async def _response(self, conn: UpstreamConnection, pump: _BodyPump | None) -> UpstreamResponse:
        """The response head. The deadline runs from the end of the request body: an answer
        cannot be expected before it, but one that comes early is taken at once."""
        if pump is not None:
            early = conn.response_head
            await asyncio.wait((early, pump.sent), return_when=asyncio.FIRST_COMPLETED)
            if not early.done():
                pump.sent.result()  # the body failed: the client left or stalled, or the backend
        return await conn.head_within(self._timeout)

    def _request_head(self, scope: Scope, request_id: str) -> tuple[bytes, int | None, bool, bytes]:
        """The request head to send, the body's length, whether it is chunked, and the client
        address (the peer's; from a trusted proxy, the one its X-Forwarded-For reports)."""
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
        if trusted and incoming_xff:
            forwarded_for = incoming_xff + b", " + peer
            reported = self._reported_client(incoming_xff) or peer
        else:
            forwarded_for = reported = peer
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
        return b"".join(parts), body_length, chunked and body_length is None, reported

    def _reported_client(self, forwarded_for: bytes) -> bytes:
        """The client a trusted proxy reports: the last address in X-Forwarded-For that is not
        itself a trusted proxy (each appends the peer it saw), else the first."""
        addresses = [a for a in (e.strip() for e in forwarded_for.split(b",")) if a]
        for address in reversed(addresses):
            if address.decode("latin-1") not in self._trusted:
                return address
        return addresses[0] if addresses else b""

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
        pace_from: Callable[[float], BodyPace],
    ) -> None:
        self._receive = receive
        self._conn = conn
        self._chunked = chunked
        self._length = length
        self._pace_from = pace_from
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
        loop = asyncio.get_running_loop()
        pace = self._pace_from(loop.time())
        written = 0
        async for chunk in _stream_body(self._receive, pace):
            conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self._chunked else chunk)
            written += len(chunk)
            waited_from = loop.time()
            await conn.drain(pace.stall)
            pace.paused(loop.time() - waited_from)  # the backend's time, not the client's
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


async def _next_message(receive: Receive, pace: BodyPace) -> tuple[bytes, bool]:
    """The client's next body bytes and whether more follow, within the body's pace."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(pace.deadline(loop.time())):
            message = await receive()
    except TimeoutError:
        if pace.behind(loop.time()):
            raise ClientStalled("the client sent the body slower than the minimum") from None
        raise ClientStalled("the client sent no body bytes within the timeout") from None
    if message["type"] == "http.disconnect":
        raise ClientGone("client disconnected while sending the body")
    chunk: bytes = message.get("body", b"")
    pace.received(len(chunk))
    return chunk, message.get("more_body", False)


async def _read_body(
    receive: Receive, first_wait: float, pace_from: Callable[[float], BodyPace]
) -> bytes:
    """A small body, whole. Its first message (usually all of it) has one plain deadline,
    ``first_wait``, which is what its pace allows before any byte: no pace is kept for a body
    that comes at once (~0.7 µs a request). One in several messages is paced from there."""
    try:
        async with asyncio.timeout(first_wait) as first_deadline:
            message = await receive()
    except TimeoutError:
        raise ClientStalled("the client sent no body bytes within the timeout") from None
    if message["type"] == "http.disconnect":
        raise ClientGone("client disconnected while sending the body")
    chunk: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return chunk
    when = first_deadline.when()
    pace = pace_from((when if when is not None else 0.0) - first_wait)  # when() is set here
    pace.received(len(chunk))
    parts = [chunk]
    while True:
        chunk, more = await _next_message(receive, pace)
        parts.append(chunk)
        if not more:
            return b"".join(parts)


async def _stream_body(receive: Receive, pace: BodyPace) -> AsyncIterator[bytes]:
    while True:
        chunk, more = await _next_message(receive, pace)
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
