"""One idle WebSocket of the scale clients: a raw ``asyncio.Protocol`` with ``__slots__`` and
nothing per connection but its state, so that 19,000 of them fit in a client process in a few
KB each (the transport's own memory included). It writes a pre-built upgrade request, tells
its ``Book`` what the handshake came to, answers the server's protocol pings (counting them,
with the time of each) and otherwise only waits; ``close`` starts the closing handshake."""

from __future__ import annotations

import asyncio
import contextlib
import time
from array import array
from collections import Counter
from typing import Final, cast

from bench.scale.frames import CLOSE, CLOSE_FRAME, PING, PONG, TEXT, client_frame, close_code
from bench.scale.frames import split_frames as _split
from bench.scale.outcomes import HEAD_END, Kind, classify_error, classify_head, key, kind_of

_WELCOME: Final = b'"connected"'
_LONGEST_HEAD: Final = 16384

# A socket's life, in order.
HANDSHAKE: Final = 0  # request sent, waiting for the response head
WELCOME: Final = 1  # 101 received, waiting for the gateway's ``connected``
OPEN: Final = 2  # held: answering pings
CLOSING: Final = 3  # our close frame sent, waiting for the server's
CLOSED_CLEANLY: Final = 4  # the server's close frame came back; the transport is closing
DONE: Final = 5  # settled otherwise (refused, dropped, aborted)


class Book:
    """What the sockets of one client process report to: handshake outcomes and times, the
    pings' gaps while ``recording``, drops by the server, the closes."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.handshake_ms = array("d")
        self.held: list[LeanSocket] = []
        self.recording = False
        self.gaps = array("d")  # seconds between consecutive pings (or upgrade → first ping)
        self.dropped: Counter[str] = Counter()  # held sockets the server closed or lost
        self.texts = 0  # text messages after the welcome (e.g. token_expiring)
        self.closed_clean = 0
        self.closed_other = 0
        self._expect_closed = 0
        self._all_closed: asyncio.Future[None] | None = None

    def pinged(self, sock: LeanSocket, now: float) -> None:
        if self.recording:
            self.gaps.append(now - (sock.last_ping or sock.opened_at))
        sock.last_ping = now
        sock.pings += 1

    def drop(self, why: str) -> None:
        self.dropped[why] += 1

    def expect_closes(self, count: int) -> asyncio.Future[None]:
        """A future done once ``count`` sockets have closed (those closed already count)."""
        self._expect_closed = count
        self._all_closed = asyncio.get_running_loop().create_future()
        if self.closed_clean + self.closed_other >= count:
            self._all_closed.set_result(None)
        return self._all_closed

    def closed(self, clean: bool) -> None:
        if clean:
            self.closed_clean += 1
        else:
            self.closed_other += 1
        waiter = self._all_closed
        done = self.closed_clean + self.closed_other >= self._expect_closed
        if waiter is not None and done and not waiter.done():
            waiter.set_result(None)


class LeanSocket(asyncio.Protocol):
    __slots__ = (
        "_book",
        "_buffer",
        "_request",
        "_transport",
        "last_ping",
        "opened_at",
        "pings",
        "settled",
        "state",
    )

    def __init__(self, book: Book, request: bytes, settled: asyncio.Future[str]) -> None:
        self._book = book
        self._request = request
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self.settled: asyncio.Future[str] | None = settled  # the handshake's outcome key
        self.state = HANDSHAKE
        self.opened_at = 0.0  # when the 101 arrived (time.monotonic)
        self.last_ping = 0.0
        self.pings = 0

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance here.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        if self.state == HANDSHAKE:
            end = data.find(HEAD_END)
            if end < 0:
                if len(data) > _LONGEST_HEAD:
                    self._settle(key(Kind.STATUS, "head too long"))
                    self.abort()
                else:
                    self._buffer = data
                return
            outcome = classify_head(data[:end])
            if kind_of(outcome) is not Kind.OK:
                self._settle(outcome)
                self.abort()
                return
            self.state = WELCOME
            self.opened_at = time.monotonic()
            data = data[end + len(HEAD_END) :]
        frames, self._buffer = _split(data)
        for opcode, payload in frames:
            if opcode == PING:
                self._write(client_frame(PONG, payload))
                self._book.pinged(self, time.monotonic())
            elif opcode == TEXT:
                self._text(payload)
            elif opcode == CLOSE:
                self._server_closed(close_code(payload))
                return

    def connection_lost(self, exc: Exception | None) -> None:
        state, self.state = self.state, DONE
        if state == HANDSHAKE:
            self._settle(classify_error(exc))
        elif state == WELCOME:
            self._settle(key(Kind.LOST_AFTER_101, "connection lost"))
        elif state == OPEN:
            self._book.drop("reset" if isinstance(exc, ConnectionResetError) else "lost")
        elif state == CLOSING:
            self._book.closed(clean=False)
        elif state == CLOSED_CLEANLY:
            self._book.closed(clean=True)
        self._transport = None

    # -- frames --------------------------------------------------------------------------

    def _text(self, payload: bytes) -> None:
        if self.state == WELCOME:
            if _WELCOME in payload:
                self.state = OPEN
                self._settle(key(Kind.OK))
            else:
                self._settle(key(Kind.LOST_AFTER_101, "unexpected first message"))
                self.abort()
        else:
            self._book.texts += 1

    def _server_closed(self, code: int | None) -> None:
        if self.state == CLOSING:
            self.state = CLOSED_CLEANLY
        elif self.state == WELCOME:
            self.state = DONE
            self._settle(key(Kind.LOST_AFTER_101, f"close {code}"))
            self._write(CLOSE_FRAME)
        elif self.state == OPEN:
            self.state = DONE
            self._book.drop(f"close {code}")
            self._write(CLOSE_FRAME)
        if self._transport is not None:
            self._transport.close()

    def _settle(self, outcome: str) -> None:
        settled, self.settled = self.settled, None
        if settled is not None and not settled.done():
            settled.set_result(outcome)

    def _write(self, frame: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame)

    # -- the client's side ---------------------------------------------------------------

    def close(self) -> bool:
        """Send our close frame (the server answers with its own and closes): True if sent."""
        if self.state != OPEN or self._transport is None or self._transport.is_closing():
            return False  # gone meanwhile: its connection_lost has not run yet
        try:
            self._transport.write(CLOSE_FRAME)
        except RuntimeError:  # uvloop: the handle is closed already
            self.state = DONE
            return False
        self.state = CLOSING
        return True

    def abort(self) -> None:
        """Drop the connection at once and for good (a handshake refused or timed out, or the
        end of the run)."""
        self.state = DONE
        transport, self._transport = self._transport, None
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(RuntimeError):
                transport.abort()
