"""The ``/api`` pass-through: a raw ASGI reverse proxy on one pool of upstream connections.

Measured (issue 3, bench/README.md): Litestar's routing and a general-purpose HTTP client cost
more per request than the proxy's whole budget, so this path bypasses both: headers are
forwarded as the raw bytes uvicorn hands over (what goes up and down: ``forwarding.py``), and
the lean client in ``connection.py`` speaks HTTP/1.1 to the backend. Bodies stream both ways
unchanged; small ones (with a known length) go in one write.

Safety (issue 16): an upstream connection is reused only after a complete exchange that was
not a 5xx, and not after sitting idle long enough for the backend to close it (the rules are
stated in ``exchange.py`` and ``pool.py``); a large or chunked body is copied by a task of its
own while the response is awaited, so an early answer from the backend is relayed at once and
the connection closed unless the body then finished; every wait has a deadline (a free
connection, the client's next body bytes, the backend taking them, the response: all named in
``ProxyDeadlines``); a request is sent twice only when that is provably harmless.

Budgets (issue 24): a request body must keep up with a minimum pace (``BodyPace``), one client
address holds at most ``connections_per_client`` exchanges at once, and streamed bodies hold at
most ``streamed_share`` of the pool, so that bodiless and small requests always find a
connection of their own: slow uploads from many clients cannot take every connection.

Traces (issue 25): with tracing on, each request is a span of its own (``request_span.py``)
and the backend is sent its traceparent in place of the client's; a client's traceparent is
continued only from a peer in TRUSTED_PROXIES. With tracing off that costs one attribute test
a request. A streamed body is copied by a ``BodyPump`` (``body_pump.py``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Final
from urllib.parse import urlsplit

from opentelemetry.trace import Span

from kalami_gateway.adapters.asgi import Receive, Scope, Send, send_json_error
from kalami_gateway.adapters.errors import BACKEND_BUSY, NOT_READY
from kalami_gateway.adapters.http.checks import TrustedPeers, climbs_out
from kalami_gateway.adapters.proxy.body_pump import BodyPump
from kalami_gateway.adapters.proxy.client_body import (
    ClientGone,
    ClientStalled,
    read_body,
    watch_disconnect,
)
from kalami_gateway.adapters.proxy.connection import UpstreamConnection, UpstreamResponse
from kalami_gateway.adapters.proxy.deadlines import BodyPace, ProxyDeadlines
from kalami_gateway.adapters.proxy.errors import PoolExhausted, UpstreamError, UpstreamTimeout
from kalami_gateway.adapters.proxy.exchange import HttpExchange
from kalami_gateway.adapters.proxy.forwarding import request_headers, response_headers
from kalami_gateway.adapters.proxy.pool import IDLE_LIMIT, SlotGate, UpstreamPool
from kalami_gateway.adapters.proxy.request_span import traced, with_traceparent
from kalami_gateway.adapters.tracing import OtelTracing
from kalami_gateway.domain.ports import BackendErrorKind

log = logging.getLogger(__name__)

# Sent again on a fresh connection only these, and only when a kept-alive connection closed
# before one byte of answer (RFC 9110 9.2.2; a POST must never reach the backend twice).
_RETRYABLE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
# Bodies up to this size (with a Content-Length) are read whole and sent in one write.
# Upstream connections to the backend at most (as many again may be retiring beside them).
POOL_SIZE: Final = 512
SMALL_BODY: Final = 256 * 1024


def streamed_share(pool_size: int) -> int:
    """How many of the pool's connections requests with a streamed body (chunked, or over
    SMALL_BODY) may hold at once: all but a quarter (rounded down), which is kept for bodiless
    and small ones. Issue 24: 520 dripping uploads held every connection, and every other
    client's request got 503."""
    return pool_size - pool_size // 4


class BadRequest(Exception):
    """A request the gateway refuses to forward (400); the message says why."""


class ApiProxy:
    """Forwards ``/api/{path}?{query}`` to ``{backend_url}/{path}?{query}``."""

    def __init__(
        self,
        backend_url: str,
        timeout_seconds: float,
        trusted_proxies: Iterable[str],
        observe_latency: Callable[[float], None],
        record_error: Callable[[BackendErrorKind], None],
        pool_size: int = POOL_SIZE,
        idle_limit: float = IDLE_LIMIT,
        connections_per_client: int = 0,
        body_min_rate: int = 0,
        body_rate_grace: float = 10.0,
        tracing: OtelTracing | None = None,
    ) -> None:
        """``timeout_seconds`` (``BACKEND_TIMEOUT``): what every wait is derived from (see
        ``ProxyDeadlines``); ``idle_limit``: how long a pooled connection may sit idle and still
        be handed out; ``connections_per_client``: concurrent exchanges per client address (0:
        no cap); ``body_min_rate``, ``body_rate_grace``: the pace a request body must keep (see
        ``BodyPace``; a rate of 0: only the stall deadline); ``tracing``: None, tracing off."""
        url = urlsplit(backend_url)
        tls = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port or (443 if tls else 80)
        default_port = self._port == (443 if tls else 80)
        self._host_header = (self._host if default_port else f"{self._host}:{self._port}").encode()
        self._base_path = url.path.rstrip("/").encode()
        self._tls = ssl.create_default_context() if tls else None
        self._deadlines = ProxyDeadlines.from_settings(
            timeout_seconds, body_min_rate, body_rate_grace
        )
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
        self._streamed_slots = SlotGate(streamed_share(pool_size))
        self._tracing = tracing

    @property
    def pool(self) -> UpstreamPool | None:
        return self._pool

    async def start(self) -> None:
        """Create the connection pool (connections open on first use)."""
        if self._pool is None:
            self._pool = UpstreamPool(
                self._host,
                self._port,
                self._pool_size,
                self._deadlines.connect,
                self._tls,
                self._idle_limit,
            )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, span: Span | None = None
    ) -> None:
        """Forward one request; ``span``: its span when traced (given by ``traced``)."""
        if span is None and self._tracing is not None:
            await traced(self, scope, receive, send, request_id, self._tracing, self._trusted)
            return
        pool = self._pool
        if pool is None:
            await send_json_error(send, 503, "Gateway is starting or stopping", code=NOT_READY)
            return
        try:
            head, body_length, chunked, client = self._request_head(scope, request_id, span)
        except BadRequest as exc:
            await send_json_error(send, 400, str(exc))
            return
        per_client = self._per_client
        if per_client:
            held = self._in_flight.get(client, 0)
            if held >= per_client:
                log.warning("proxy_client_over_limit", extra={"client": client.decode("latin-1")})
                await send_json_error(
                    send, 503, "Backend busy: too many requests from this client", code=BACKEND_BUSY
                )
                return
            self._in_flight[client] = held + 1
        method: str = scope["method"]
        is_head = method == "HEAD"
        deadlines = self._deadlines
        conn: UpstreamConnection | None = None
        pump: BodyPump | None = None
        streamed_slot = False
        try:
            try:
                body: bytes | None = None
                if body_length and body_length <= SMALL_BODY:  # read whole, sent in one write
                    body = await read_body(receive, deadlines.first_body_bytes, self._pace)
                streamed = body is None and (chunked or (body_length or 0) > 0)
                started = time.perf_counter()
                wait = deadlines.free_connection
                if streamed:
                    # Its share of the pool first, then a connection: both within one wait.
                    await self._streamed_slots.take(wait)
                    streamed_slot = True
                    wait = max(0.0, wait - (time.perf_counter() - started))
                for attempt in (1, 2):
                    conn = await pool.acquire(wait, fresh=attempt == 2)
                    exchange = HttpExchange(is_head, body_length, chunked, streams_body=streamed)
                    conn.begin(exchange, head, body or b"")
                    if streamed:
                        pump = BodyPump(receive, conn, self._pace, deadlines.backend_takes_body)
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
                            or exchange.received_any
                            or method not in _RETRYABLE_METHODS
                        ):
                            raise
                        pool.release(conn)
                        conn = None
            except PoolExhausted:
                self._record_error(BackendErrorKind.UNREACHABLE)
                log.warning("proxy_pool_exhausted")
                await send_json_error(
                    send, 503, "Backend busy: no connection free", code=BACKEND_BUSY
                )
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
        return BodyPace(self._deadlines.body_stall, self._min_rate, self._rate_grace, start)

    async def _response(self, conn: UpstreamConnection, pump: BodyPump | None) -> UpstreamResponse:
        """The response head. The deadline runs from the end of the request body: an answer
        cannot be expected before it, but one that comes early is taken at once."""
        if pump is not None:
            early = conn.response_head
            await asyncio.wait((early, pump.sent), return_when=asyncio.FIRST_COMPLETED)
            if not early.done():
                pump.sent.result()  # the body failed: the client left or stalled, or the backend
        return await conn.head_within(self._deadlines.response_head)

    def _request_head(
        self, scope: Scope, request_id: str, span: Span | None = None
    ) -> tuple[bytes, int | None, bool, bytes]:
        """The request head to send (its body's framing header excepted: the exchange's), the
        body's length, whether it is chunked, and the client address (the peer's; from a
        trusted proxy, the one its X-Forwarded-For reports). Traced (``span``), the client's
        traceparent is replaced by the span's, and its tracestate kept only from a trusted
        peer (it belongs to the trace that peer's traceparent continued)."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        rest = raw_path[len(b"/api") :] or b"/"
        if climbs_out(rest):
            raise BadRequest("The path climbs out of /api with dot-segments")
        target = self._base_path + rest
        query: bytes = scope["query_string"]
        if query:
            target += b"?" + query
        client = scope.get("client")
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if span is not None:
            headers = with_traceparent(
                headers, span, client is not None and client[0] in self._trusted
            )
        forwarded = request_headers(
            headers,
            client[0] if client else None,
            scope.get("scheme", "http"),
            request_id,
            self._trusted,
        )
        head = b"".join(
            (
                scope["method"].encode(),
                b" ",
                target,
                b" HTTP/1.1\r\nhost: ",
                self._host_header,
                b"\r\n",
                forwarded.lines,
            )
        )
        return head, forwarded.body_length, forwarded.chunked, forwarded.client

    async def _relay(
        self, response: UpstreamResponse, receive: Receive, send: Send, pump: BodyPump | None
    ) -> None:
        headers = response_headers(response.status, response.headers)
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
            watcher = asyncio.create_task(watch_disconnect(receive, gone))
        else:
            gone = pump.gone
        try:
            async for chunk in response.chunks(self._deadlines.response_stall):
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
