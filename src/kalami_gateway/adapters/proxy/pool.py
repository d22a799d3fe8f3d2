"""The ``/api`` proxy's pool: up to ``size`` keep-alive connections to one backend
(``UpstreamPool``), and the gate that bounds how many are held at once (``SlotGate``).

A connection goes back to the pool only after a complete exchange (``exchange.py`` states the
rule; ``UpstreamPool.release`` is the only way back).

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
  left open for up to ``RETIRE_GRACE`` for the backend to close it, then closed. The wait
  keeps the TIME_WAIT on the backend's side (measured: closing at once, the gateway held 173 of
  200; retired, 1): were the gateway the first to close after every 5xx, a backend failing a
  few hundred requests a second would fill the gateway's ~28k ephemeral ports (each held 60 s)
  and every connect to the backend would fail. At most ``size`` connections are retiring at
  once; past that, and at shutdown, they are closed at once. The cost is a new connection per
  5xx: none while the backend is healthy, one connect per answer from a backend shedding load
  with 503s.
- *The backend closed an idle connection* (its keep-alive timeout: uvicorn's is 5 s). When the
  loop reads its FIN the transport closes itself at once (``UpstreamConnection`` has no
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
from typing import Final

from kalami_gateway.adapters.proxy.connection import UpstreamConnection
from kalami_gateway.adapters.proxy.errors import PoolExhausted, UpstreamError, UpstreamTimeout

# How long a retired connection is left for the backend to close (uvicorn closes one that
# answered 500 once the traceback is logged) before the gateway closes it. Correctness never
# depends on it (a retired connection is never used again); only who keeps the TIME_WAIT does.
RETIRE_GRACE: Final = 1.0
# An idle connection older than this is not handed out: under the keep-alive timeout of the
# backend (uvicorn's default is 5 s), so the backend never closes one as a request reaches it.
IDLE_LIMIT: Final = 4.0


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
    never used again, left for the backend to close for up to ``RETIRE_GRACE`` (at most
    ``size`` of them at once, outside the pool's own ``size``). See the module docstring.
    ``connect_timeout``: the deadline of opening a connection."""

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
            conn.reused = False
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        elif conn.ended_cleanly and not self._closed:
            self._retire(conn)  # a complete exchange whose answer was a 5xx
        else:
            conn.close()
            self._open.discard(conn)
        self._slots.give()

    def _retire(self, conn: UpstreamConnection) -> None:
        """Never to be used again; left for the backend to close first, so that the TIME_WAIT
        is its own (see the module docstring), for up to ``RETIRE_GRACE``."""
        if len(self._retiring) >= self._size:
            conn.close()
            self._open.discard(conn)
            return
        conn.on_lost = self._retired
        self._retiring[conn] = asyncio.get_running_loop().call_later(RETIRE_GRACE, conn.close)

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
