"""A lean HTTP/1.1 client for the ``/api`` pass-through: pooled keep-alive connections to one
backend, requests written as raw bytes, responses parsed by httptools (the parser uvicorn
uses), bodies streamed with back-pressure both ways.

Why not aiohttp or httpx: per proxied request their general-purpose machinery (URL objects,
header multidicts, cookie jars, auto headers, timers) cost more CPU than the proxy's whole
budget (see bench/README.md). This client does only what a reverse proxy needs.

**The pool's one rule** (a desynced pooled connection is request smuggling: the next request
written on it is read by the backend as the body of the last one): a connection goes back to
the pool only after a *complete exchange* — every request body byte its head promised was
written, and the response was read to its end with framing the parser fully accounted for
(a Content-Length or chunked body, or none by status or method), keep-alive on both sides,
and not one byte more. Every other exit — the client leaving, an early response with the
body unsent, a timeout, a parse error, extra or unexpected bytes, cancellation, an exception
anywhere — closes it. ``UpstreamConnection.reusable`` is that rule; ``UpstreamPool.release``
is the only way back into the pool.

**Nothing is sent onto a connection the backend is closing** (issue 22, item 4). A request
written onto such a connection dies before any answer, and a POST must then fail (502): its
bytes may have reached the backend and nothing proves they were not acted on, so it is never
sent again. So a pooled connection must not be one the backend is about to close. Three ways
it can be, and what stops each:

- *The backend answered 5xx and then closes.* Starlette's ``ServerErrorMiddleware`` answers an
  unhandled exception with a 500 that does not say ``Connection: close``, then re-raises, and
  uvicorn closes the socket only once it has logged the traceback — after the next request
  may be on its way (the report: 8 of 20 POSTs sent right after such a 500 got 502; here, on
  uvloop, 104 to 163 of 200). So a connection that answered 5xx is **never pooled again**,
  whatever its headers say: it is *retired* — out of the pool, its slot given back at once,
  left open for up to ``_RETIRE_GRACE`` for the backend to close it, then closed. The wait
  keeps the TIME_WAIT on the backend's side (measured: closing at once, the gateway held 173 of
  200; retired, 1): were the gateway the first to close after every 5xx, a backend failing a
  few hundred requests a second would fill the gateway's ~28k ephemeral ports (each held 60 s)
  and every connect to the backend would fail. At most ``size`` connections are retiring at
  once; past that, and at shutdown, they are closed at once. The cost is a new connection per
  5xx: none while the backend is healthy, one connect per answer from a backend shedding load
  with 503s.
- *The backend closed an idle connection* (its keep-alive timeout: uvicorn's is 5 s). When the
  loop reads its FIN the transport closes itself at once (this protocol has no
  ``eof_received``): ``is_closing()`` is true from then on and ``lost`` is set a callback
  later. ``reusable`` checks both when a connection is handed out.
- *The backend closes it as the request is written* (its FIN in flight, or arrived but not yet
  read by the loop): nothing can see that. So no connection is handed out after ``idle_limit``
  idle (4 s, under uvicorn's 5): the backend's keep-alive timer cannot have fired. An older
  one is retired, like a 5xx one, for that timer to close it. Measured without the limit:
  POSTs 0.2 s ± 4 ms apart against a 0.2 s keep-alive, 2 of 150 got 502. A backend whose
  keep-alive is shorter than ``idle_limit`` keeps this (rare) race.

Weighed and left out:

- Yielding to the loop before handing out an idle connection, so that a FIN already in the
  socket is read: a loop iteration on every request (on asyncio's loop one is not even enough:
  a woken task runs before the callbacks of the poll that read the FIN), and it cannot see a
  FIN still in flight or one sent only after a traceback is logged: it would narrow the last
  race, which the idle limit removes without that cost.
- Resending a POST whose connection closed "before one byte was written": a write to a socket
  whose peer has closed succeeds locally, so "unsent" cannot be proven. And "no byte of
  answer" does not mean "not run": after a 200 whose ``BackgroundTask`` raises, uvicorn closes
  the connection under the next request *after running it* (measured: 10 of 10 such POSTs
  ran at the backend, then got 502). A resend would have run them twice.

The cost on the hot path: one ``time.monotonic()`` (vDSO, no syscall) when a connection is
pooled and one when it is handed out, and two comparisons; no extra loop iteration
(acquire + release: ~0.65 → ~0.83 µs in a micro-benchmark; a proxied request, ~50 µs).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Final

import httptools

# Above this much unread response body, stop reading from the backend until the client catches up.
_READ_HIGH_WATER: Final = 1 << 20
# How long a retired connection is left for the backend to close (uvicorn closes one that
# answered 500 once the traceback is logged) before the gateway closes it. Correctness never
# depends on it (a retired connection is never used again); only who keeps the TIME_WAIT does.
_RETIRE_GRACE: Final = 1.0
# An idle connection older than this is not handed out: under the keep-alive timeout of the
# backend (uvicorn's default is 5 s), so the backend never closes one as a request reaches it.
IDLE_LIMIT: Final = 4.0


class UpstreamError(Exception):
    """The backend could not be reached, or broke the connection or the protocol."""


class UpstreamTimeout(UpstreamError):  # a kind of UpstreamError, named for the domain
    """The backend took longer than the timeout."""


class PoolExhausted(UpstreamError):
    """Every upstream connection stayed busy for the whole wait."""


class UpstreamResponse:
    """Status and headers of a response; the body is read with ``chunks()``."""

    __slots__ = ("_conn", "headers", "status")

    def __init__(
        self, conn: UpstreamConnection, status: int, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers

    @property
    def complete(self) -> bool:
        """The whole body has arrived (it can be taken at once with ``body()``)."""
        return self._conn.message_complete

    @property
    def violation(self) -> str | None:
        """What the backend sent that its framing did not account for, if anything."""
        return self._conn.violation

    def body(self) -> bytes:
        """The body of a complete response."""
        return self._conn.take_body()

    def chunks(self, read_timeout: float) -> AsyncIterator[bytes]:
        return self._conn.iter_body(read_timeout)


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._head_request = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._reading_paused = False
        self._final_begun = False
        self.received_any = False
        self.message_complete = False
        # Set by the caller once every body byte the request head promised has been written.
        self.request_complete = False
        # llhttp answers should_keep_alive() only inside its callbacks, so it is kept here.
        self._keep_alive = False
        self._framed = False
        self._eof_delimited = False
        # Came from the idle pool (a retry is only ever considered on such a connection).
        self.reused = False
        # The status of the last final response; when it went back to the idle pool.
        self.status = 0
        self.idle_since = 0.0
        # Told when the connection is gone (a retired connection's pool is).
        self.on_lost: Callable[[UpstreamConnection], None] | None = None
        # Anything the parser could not account for: the response is not trusted, the
        # connection is closed.
        self.violation: str | None = None
        self.lost: Exception | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence no isinstance check.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if self._parser is None or self.message_complete:
            # Nothing is expected: bytes while idle, after a complete response, or a body
            # after a HEAD response's headers. The backend and we disagree on framing.
            self._violate("the backend sent bytes outside a response")
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._violate("the backend switched protocols")
        except httptools.HttpParserError as exc:
            self._violate(f"malformed response from the backend: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("the backend closed the connection")
        if (
            self._eof_delimited
            and exc is None
            and self.violation is None
            and self._head is not None
            and self._head.done()
        ):
            # No Content-Length, not chunked: the body ends where the connection does.
            self.message_complete = True
            self._wake_data()
        if not self.message_complete:
            self._fail(UpstreamError("the backend closed the connection"))
        self._wake_drain()
        if self.on_lost is not None:
            self.on_lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._final_begun or self.message_complete:
            self._violate("the backend sent a second response to one request")

    def on_header(self, name: bytes, value: bytes | None) -> None:
        if self.violation is None:
            self._headers.append((name, value or b""))

    def on_headers_complete(self) -> None:
        assert self._parser is not None  # noqa: S101  # callbacks come from the parser
        if self.violation is not None:
            return
        status = self._parser.get_status_code()
        if status == 101:
            self._violate("the backend switched protocols")  # we never ask it to
            return
        if 100 <= status < 200:
            self._headers = []  # an interim response (100 Continue): wait for the real one
            return
        self._final_begun = True
        self.status = status
        self._keep_alive = self._parser.should_keep_alive()
        lengths = chunked = 0
        other_coding = False
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"content-length":
                lengths += 1
            elif lower == b"transfer-encoding":
                codings = [c.strip().lower() for c in value.split(b",")]
                if codings[-1] == b"chunked":
                    chunked += 1
                else:
                    other_coding = True
        bodiless = self._head_request or status in (204, 304)
        # Exactly one way of knowing where the body ends; llhttp already refuses CL + TE and
        # differing Content-Lengths, this refuses the rest of the ambiguity.
        self._framed = bodiless or (
            not other_coding and ((lengths == 1 and not chunked) or (chunked == 1 and not lengths))
        )
        self._eof_delimited = not bodiless and lengths == 0 and chunked == 0
        if bodiless:
            self.message_complete = True
        if self._head is not None and not self._head.done():
            self._stop_head_timer()
            self._head.set_result(UpstreamResponse(self, status, self._headers))

    def on_body(self, body: bytes) -> None:
        if self.message_complete or self.violation is not None:
            self._violate("the backend sent a body where none belongs")
            return
        self._body.append(body)
        self._buffered += len(body)
        if (
            self._buffered > _READ_HIGH_WATER
            and self.transport is not None
            and not self._reading_paused
        ):
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_data()

    def on_message_complete(self) -> None:
        assert self._parser is not None  # noqa: S101  # callbacks come from the parser
        if self.violation is not None or 100 <= self._parser.get_status_code() < 200:
            return
        self._keep_alive = self._keep_alive and self._parser.should_keep_alive()
        self.message_complete = True
        self._wake_data()

    # -- the request -----------------------------------------------------------------------

    def begin(
        self, data: bytes, is_head_request: bool, request_complete: bool
    ) -> asyncio.Future[UpstreamResponse]:
        """Write the request head (and the whole body, if ``request_complete``); the future
        resolves with the response head."""
        assert self.transport is not None  # noqa: S101  # pooled connections are connected
        self._parser = httptools.HttpResponseParser(self)
        self._head_request = is_head_request
        self._headers = []
        self._body.clear()
        self._buffered = 0
        self._final_begun = False
        self.received_any = False
        self.message_complete = False
        self.request_complete = request_complete
        self._keep_alive = False
        self._framed = False
        self._eof_delimited = False
        self._head = self._loop.create_future()
        if self.violation is not None or self.lost is not None:
            # Broken before the request was written (a fresh connection the backend sent
            # bytes on, or closed): fail now rather than wait out the timeout.
            self._head.set_exception(UpstreamError(self.violation or "the backend closed"))
            return self._head
        self.transport.write(data)
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

    def take_body(self) -> bytes:
        body = b"".join(self._body)
        self._body.clear()
        self._buffered = 0
        return body

    async def iter_body(self, read_timeout: float) -> AsyncIterator[bytes]:
        while True:
            if self.violation is not None:
                raise UpstreamError(self.violation)
            if self._body:
                chunk = self._body.popleft()
                self._buffered -= len(chunk)
                if (
                    self._reading_paused
                    and self._buffered < _READ_HIGH_WATER // 2
                    and self.transport
                ):
                    self._reading_paused = False
                    self.transport.resume_reading()
                yield chunk
                continue
            if self.message_complete:
                return
            if self.lost is not None:
                raise UpstreamError("the backend closed the connection mid-body")
            self._data_waiter = self._loop.create_future()
            try:
                async with asyncio.timeout(read_timeout):
                    await self._data_waiter
            except TimeoutError:
                raise UpstreamTimeout("the backend stopped sending the body") from None

    @property
    def reusable(self) -> bool:
        """The exchange was complete on both sides and nothing is left over, and the backend
        has not closed the connection (the pool's rule; a 5xx is refused by the pool itself)."""
        return (
            self.request_complete
            and self.message_complete
            and self._framed
            and self._keep_alive
            and self.violation is None
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


class SlotGate:
    """At most ``size`` holders; a taker waits (bounded) in arrival order for a free slot.

    A counter and a queue of waiters rather than asyncio.Semaphore, whose locked() walks its
    waiters on every call (~3% of a proxied GET's CPU in the profile)."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def take(self, wait: float) -> None:
        """Hold a slot; raises PoolExhausted if none frees up within ``wait`` seconds."""
        if self.free and not self._waiters:
            self.free -= 1  # the common case: no wait, no timer
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(wait):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed over just as the wait ended: pass it on
            else:
                waiter.cancel()
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise PoolExhausted("no upstream connection became free in time") from None
            raise

    def give(self) -> None:
        """Give a slot back: straight to the longest waiter, if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class UpstreamPool:
    """Up to ``size`` connections to ``host:port``; callers wait (bounded) for a free slot.

    Connections that answered 5xx, and idle ones past ``idle_limit`` seconds, are retired:
    never used again, left for the backend to close for up to ``_RETIRE_GRACE`` (at most
    ``size`` of them at once, outside the pool's own ``size``). See the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        size: int,
        connect_timeout: float,
        tls: ssl.SSLContext | None = None,
        idle_limit: float = IDLE_LIMIT,
    ) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._idle_limit = idle_limit
        self._size = size
        self._idle: collections.deque[UpstreamConnection] = collections.deque()
        self._slots = SlotGate(size)
        self._open: set[UpstreamConnection] = set()
        # Out of the pool for good, waiting for the backend to close them: their close timers.
        self._retiring: dict[UpstreamConnection, asyncio.TimerHandle] = {}
        self._closed = False

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def acquire(self, wait: float, fresh: bool = False) -> UpstreamConnection:
        """A connected connection: an idle one unless ``fresh``, else a new one.

        Raises PoolExhausted if no slot frees up within ``wait`` seconds."""
        if self._closed:
            raise UpstreamError("the gateway is shutting down")
        await self._slots.take(wait)
        try:
            if self._idle and not fresh:
                # The newest first: if it is too old, so is every other (they were pooled
                # earlier), and all are let go on the way to a fresh one.
                oldest_allowed = time.monotonic() - self._idle_limit
                while self._idle:
                    conn = self._idle.pop()
                    # Still reusable: nothing arrived or broke (no EOF) while it sat idle.
                    if conn.reusable:
                        if conn.idle_since > oldest_allowed:
                            conn.reused = True
                            return conn
                        self._retire(conn)  # its close is the backend's keep-alive timer's
                    else:
                        conn.close()
                        self._open.discard(conn)
            return await self._connect()
        except BaseException:
            self._slots.give()
            raise

    def release(self, conn: UpstreamConnection) -> None:
        """Give a connection back: pooled only after a complete exchange that was not a 5xx;
        after a complete 5xx, retired; closed otherwise."""
        if conn.reusable and not self._closed:
            if conn.status < 500:
                conn.reused = False
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
            else:
                self._retire(conn)
        else:
            conn.close()
            self._open.discard(conn)
        self._slots.give()

    def _retire(self, conn: UpstreamConnection) -> None:
        """Never to be used again; left for the backend to close first, so that the TIME_WAIT
        is its own (see the module docstring), for up to ``_RETIRE_GRACE``."""
        if len(self._retiring) >= self._size:
            conn.close()
            self._open.discard(conn)
            return
        conn.on_lost = self._retired
        self._retiring[conn] = asyncio.get_running_loop().call_later(_RETIRE_GRACE, conn.close)

    def _retired(self, conn: UpstreamConnection) -> None:
        timer = self._retiring.pop(conn, None)
        if timer is not None:
            timer.cancel()
        self._open.discard(conn)

    async def close(self) -> None:
        self._closed = True
        for timer in self._retiring.values():
            timer.cancel()
        self._retiring.clear()
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)

    async def _connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(loop),
                    self._host,
                    self._port,
                    ssl=self._tls,
                    server_hostname=self._host if self._tls else None,
                )
        except TimeoutError:
            raise UpstreamTimeout(f"connecting to {self._host}:{self._port} timed out") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {self._host}:{self._port}: {exc}") from None
        self._open.add(conn)
        return conn
