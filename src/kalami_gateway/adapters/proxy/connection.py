"""A lean HTTP/1.1 client for the ``/api`` pass-through: one keep-alive connection to the
backend (``UpstreamConnection``, an ``asyncio.Protocol``), requests written as raw bytes,
bodies streamed with back-pressure both ways. What the bytes mean — the request's framing, the
response's events, whether the connection may be reused — is the exchange's
(``exchange.py``); this shell only moves bytes between the socket and the exchange, and turns
the events into what the relay awaits (the response head, the body, their deadlines).

Why not aiohttp or httpx: per proxied request their general-purpose machinery (URL objects,
header multidicts, cookie jars, auto headers, timers) cost more CPU than the proxy's whole
budget (see bench/README.md). This client does only what a reverse proxy needs.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from typing import Final

from kalami_gateway.adapters.proxy.errors import UpstreamError, UpstreamTimeout
from kalami_gateway.adapters.proxy.exchange import (
    BodyPiece,
    ClosedEarly,
    Event,
    Header,
    HttpExchange,
    ResponseEnd,
    ResponseHead,
    Violation,
)

# Above this much unread response body, stop reading from the backend until the client catches up.
READ_HIGH_WATER: Final = 1 << 20


class UpstreamResponse:
    """Status and headers of a response; the body is read with ``chunks()``."""

    __slots__ = ("_conn", "_exchange", "headers", "status")

    def __init__(
        self,
        conn: UpstreamConnection,
        exchange: HttpExchange,
        status: int,
        headers: list[Header],
    ) -> None:
        self._conn = conn
        self._exchange = exchange
        self.status = status
        self.headers = headers

    @property
    def complete(self) -> bool:
        """The whole body has arrived (it can be taken at once with ``body()``)."""
        return self._exchange.message_complete

    @property
    def violation(self) -> str | None:
        """What the backend sent that its framing did not account for, if anything."""
        return self._conn.violation

    def body(self) -> bytes:
        """The body of a complete response."""
        return self._conn.take_body()

    def chunks(self, stall_limit: float) -> AsyncIterator[bytes]:
        """The body as it arrives; UpstreamTimeout if no byte comes for ``stall_limit`` s."""
        return self._conn.iter_body(stall_limit)


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time (``begin``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        # The exchange begun last (None before the first).
        self._exchange: HttpExchange | None = None
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        # Response body not yet taken by the relay.
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._reading_paused = False
        # Came from the idle pool (a retry is only ever considered on such a connection).
        self.reused = False
        # When it went back to the idle pool.
        self.idle_since = 0.0
        # Told when the connection is gone (a retired connection's pool is).
        self.on_lost: Callable[[UpstreamConnection], None] | None = None
        # Anything the backend sent that no framing accounts for (an exchange's violation, or
        # bytes while no exchange was begun): the connection is closed, never used again.
        self.violation: str | None = None
        self.lost: Exception | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence no isinstance check.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is None:
            # Nothing is expected: bytes before the first request.
            self._violate("the backend sent bytes outside a response")
            return
        self._handle(exchange, exchange.feed(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("the backend closed the connection")
        exchange = self._exchange
        if exchange is not None:
            self._handle(exchange, exchange.feed_eof(reset=exc is not None))
        self._wake_drain()
        if self.on_lost is not None:
            self.on_lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def _handle(self, exchange: HttpExchange, events: list[Event]) -> None:
        for event in events:
            # By exact type, the commonest first (~0.15 µs a request less than isinstance).
            if type(event) is BodyPiece:
                self._body.append(event.data)
                self._buffered += len(event.data)
                if (
                    self._buffered > READ_HIGH_WATER
                    and self.transport is not None
                    and not self._reading_paused
                ):
                    self._reading_paused = True
                    self.transport.pause_reading()
                self._wake_data()
            elif type(event) is ResponseHead:
                if self._head is not None and not self._head.done():
                    self._stop_head_timer()
                    self._head.set_result(
                        UpstreamResponse(self, exchange, event.status, event.headers)
                    )
            elif type(event) is ResponseEnd:
                self._wake_data()
            elif type(event) is Violation:
                self._violate(event.reason)
            elif type(event) is ClosedEarly:
                self._fail(UpstreamError("the backend closed the connection"))

    # -- the request -----------------------------------------------------------------------

    def begin(
        self, exchange: HttpExchange, head: bytes, body: bytes = b""
    ) -> asyncio.Future[UpstreamResponse]:
        """Write the request that opens ``exchange``: ``head`` and, when it goes whole,
        ``body`` (see ``HttpExchange.request``); the future resolves with the response head."""
        assert self.transport is not None  # noqa: S101  # pooled connections are connected
        self._exchange = exchange
        # Empty already (a connection is begun fresh, or after a reusable exchange, whose body
        # was all taken); cleared all the same: no byte of the last answer is ever this one's.
        self._body.clear()
        self._buffered = 0
        self._head = self._loop.create_future()
        if self.violation is not None or self.lost is not None:
            # Broken before the request was written (a fresh connection the backend sent
            # bytes on, or closed): fail now rather than wait out the timeout.
            self._head.set_exception(UpstreamError(self.violation or "the backend closed"))
            return self._head
        self.transport.write(exchange.request(head, body))
        return self._head

    @property
    def response_head(self) -> asyncio.Future[UpstreamResponse]:
        """The response head of the request begun last (no deadline of its own)."""
        assert self._head is not None  # noqa: S101  # begin() came first
        return self._head

    def head_within(self, seconds: float) -> asyncio.Future[UpstreamResponse]:
        """The response head, failing with UpstreamTimeout unless it arrives within
        ``seconds`` from now. A timer handle, not a Timeout scope: ~3 µs less a request."""
        head = self.response_head
        if not head.done():
            self._stop_head_timer()
            self._head_timer = self._loop.call_later(seconds, self._head_overdue)
        return head

    def send_body(self, data: bytes) -> None:
        """The next piece of a streamed request body, framed by the exchange."""
        assert self._exchange is not None  # noqa: S101  # begin() came first
        self.write(self._exchange.body_piece(data))

    def end_body(self) -> None:
        """The streamed request body is all sent (the exchange writes its end, if any)."""
        assert self._exchange is not None  # noqa: S101  # begin() came first
        ending = self._exchange.body_end()
        if ending:
            self.write(ending)

    def write(self, data: bytes) -> None:
        if self.lost is not None or self.violation is not None:
            raise UpstreamError("the backend closed the connection")
        assert self.transport is not None  # noqa: S101
        self.transport.write(data)

    async def drain(self, stall_limit: float) -> None:
        """Wait until the backend has taken what was written (at most ``stall_limit`` s)."""
        if self.lost is not None:
            raise UpstreamError("the backend closed the connection")
        if self._write_paused:
            self._drain_waiter = self._loop.create_future()
            try:
                async with asyncio.timeout(stall_limit):
                    await self._drain_waiter
            except TimeoutError:
                raise UpstreamTimeout("the backend stopped reading the request body") from None
            if self.lost is not None:
                raise UpstreamError("the backend closed the connection")

    # -- the response body -----------------------------------------------------------------

    def take_body(self) -> bytes:
        body = b"".join(self._body)
        self._body.clear()
        self._buffered = 0
        return body

    async def iter_body(self, stall_limit: float) -> AsyncIterator[bytes]:
        while True:
            if self.violation is not None:
                raise UpstreamError(self.violation)
            if self._body:
                chunk = self._body.popleft()
                self._buffered -= len(chunk)
                if (
                    self._reading_paused
                    and self._buffered < READ_HIGH_WATER // 2
                    and self.transport
                ):
                    self._reading_paused = False
                    self.transport.resume_reading()
                yield chunk
                continue
            if self._exchange is not None and self._exchange.message_complete:
                return
            if self.lost is not None:
                raise UpstreamError("the backend closed the connection mid-body")
            self._data_waiter = self._loop.create_future()
            try:
                async with asyncio.timeout(stall_limit):
                    await self._data_waiter
            except TimeoutError:
                raise UpstreamTimeout("the backend stopped sending the body") from None

    # -- the verdict -----------------------------------------------------------------------

    @property
    def ended_cleanly(self) -> bool:
        """The exchange ended cleanly (``HttpExchange.ended_cleanly``), its response body was
        all taken, and the connection is still open: everything ``reusable`` asks but the
        status (the pool retires such a connection after a 5xx)."""
        exchange = self._exchange
        return exchange is not None and exchange.ended_cleanly and self._still_open()

    @property
    def reusable(self) -> bool:
        """The exchange allows another on this connection (``HttpExchange.reusable``: complete
        on both sides, nothing left over, not a 5xx), its response body was all taken, and the
        backend has not closed the connection (the pool's rule)."""
        exchange = self._exchange
        return exchange is not None and exchange.reusable and self._still_open()

    def _still_open(self) -> bool:
        return (
            self.violation is None
            and self.lost is None
            and not self._body
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        # Nobody awaits this exchange's answer any more: settle it quietly (an exception set
        # on it later would be logged as never retrieved).
        self._stop_head_timer()
        if self._head is not None:
            if not self._head.done():
                self._head.cancel()
            elif not self._head.cancelled():
                self._head.exception()
        if self.transport is not None:
            self.transport.close()

    def _violate(self, reason: str) -> None:
        if self.violation is None:
            self.violation = reason
        self._fail(UpstreamError(reason))
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        if self._head is not None and not self._head.done():
            self._stop_head_timer()
            self._head.set_exception(exc)
        self._wake_data()

    def _head_overdue(self) -> None:
        self._head_timer = None
        self._fail(UpstreamTimeout("no response within the timeout"))

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _wake_data(self) -> None:
        if self._data_waiter is not None and not self._data_waiter.done():
            self._data_waiter.set_result(None)

    def _wake_drain(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
