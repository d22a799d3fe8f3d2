"""A WebSocket connection's reads under the gateway's budgets (issue 24), in one place for
both engines: ``LivelyWebSocketProtocol`` (``WS_ENGINE=uvicorn``) and
``NativeWebSocketProtocol`` (``WS_ENGINE=native``) keep the same state under the same names
(``MeteredReader``) and call these where they read, parse and close:

- the frame budget (``frame_budget``: its numbers, and the flood they were measured
  against): a read over the budget's room is parsed in pieces the budget allows
  (``metered``); past it the rest waits unparsed with reading paused (``throttle``) until
  the budget has come back (``unthrottle``, ``feed_stash``);
- what arrives meanwhile: kept in order while throttled or before the accept, discarded up
  to a bound while the connection lingers (``hold_back``);
- pongs against the send buffer: a peer that pings and does not read the pongs is let go
  as a slow consumer (``let_go_slow``; it grew the gateway by 260+ MiB);
- the close budgets (``close_budget``): no more than a close reply's worth read after the
  gateway's own close frame (``enough_after_close``), the lingering close after a
  protocol error (``linger``).

Whether all this holds the peer's frames back, so that its pong may be stuck behind them,
is ``liveness``'s to judge.

The per-frame path (a read within the budget's room, parsed whole) stays in each engine's
``data_received``, as do the engines' parsers and handshake states; these run on the slow
paths only, each where a method of the engine's own ran before, at the same call depth.
The only names of uvicorn's used here are ``loop`` and ``transport`` (the uvicorn engine
uses both itself, where tests/unit/adapters/server/test_third_party_internals.py checks
them); it keeps ``_read_paused`` and ``_inbox`` as its names for uvicorn's ``read_paused``
and ``queue``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Protocol

from kalami_gateway.adapters.server import close_budget
from kalami_gateway.adapters.server.frame_budget import NO_BUDGET, refilled, room, throttle_wait

log = logging.getLogger(__name__)


class _Waiting(Protocol):
    def empty(self) -> bool: ...


class MeteredReader(Protocol):
    """What a WebSocket protocol of either engine keeps for the budgets of its reads."""

    @property
    def frame_rate(self) -> float: ...  # frames a second per connection (0: no budget)
    @property
    def send_buffer_bytes(self) -> int: ...  # unsent bytes past which a peer that pings goes
    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def transport(self) -> asyncio.Transport: ...
    @property
    def _inbox(self) -> _Waiting: ...  # the messages waiting for the app

    # Bytes that may still be parsed without looking at the budget (one comparison and one
    # subtraction per read): at most MIN_FRAME per frame the budget holds. -1 while every
    # read must take the slow path: before the accept, throttled, lingering, backed up.
    _room: int
    _credit: float  # frames that may still be parsed (the budget's level)
    _stamp: float  # loop time of the budget's last refill (0: it starts full)
    _stash: bytes | None  # read but not parsed yet: throttled, or before the accept
    _throttle: asyncio.TimerHandle | None  # when a throttled connection is read again
    # Over its frame budget since the last read parsed whole within it: what is parsed is a
    # backlog, old news of the peer, so it does not stand for a pong (its kernel's
    # acknowledgements do: liveness).
    _behind: bool
    _backed_up: bool  # the transport's write buffer is past its high-water mark
    _linger_left: int | None  # bytes still read and discarded (None: not lingering)
    _read_after_close: int  # bytes read since the gateway's own close frame
    _read_paused: bool  # reading paused for a message waiting for the app
    _slow: bool  # let go for not reading what it was owed

    def _parse(self, data: bytes) -> bool:
        """Parse and handle ``data``; False once nothing more is parsed."""
        ...

    def _received_slowly(self, data: bytes) -> None:
        """Every read that is not simply parsed."""
        ...


# -- What arrives while nothing is parsed ------------------------------------------------


def hold_back(reader: MeteredReader, data: bytes) -> None:
    """A read while the connection lingers (discarded, up to a bound) or while reads are kept
    (throttled, or waiting for the accept: kept in order)."""
    if reader._linger_left is not None:
        reader._linger_left -= len(data)
        if reader._linger_left < 0:
            reader.transport.pause_reading()  # the close timer ends it
        return
    stash = reader._stash
    assert stash is not None  # noqa: S101  # the caller's condition: one of the two is set
    reader._stash = stash + data
    reader.transport.pause_reading()


def enough_after_close(reader: MeteredReader, data: bytes) -> bool:
    """After the gateway's own close frame: whether what has been read, ``data`` too, is past
    a close reply's worth (``CLOSE_READ_BYTES``); then ``data`` and the rest are discarded
    until the close timer."""
    reader._read_after_close += len(data)
    if reader._read_after_close <= close_budget.CLOSE_READ_BYTES:
        return False
    reader._linger_left = 0
    reader._room = -1
    reader.transport.pause_reading()
    return True


# -- The frame budget --------------------------------------------------------------------


def metered(reader: MeteredReader, data: bytes) -> None:
    """Parse ``data`` in pieces the frame budget allows; past it, keep the rest."""
    if reader.frame_rate <= 0:
        reader._parse(data)
        return
    refill(reader)
    start, size = 0, len(data)
    while start < size:
        if reader._credit < 1:
            throttle(reader, data[start:])
            return
        end = min(size, start + room(reader._credit))
        if not reader._parse(data if start == 0 and end == size else data[start:end]):
            return
        start = end
    if reader._credit <= 0:
        budget_spent(reader)
    else:
        reader._behind = False
        open_room(reader)


def refill(reader: MeteredReader) -> None:
    """The budget's level brought to now (full at the accept), and the room with it."""
    rate = reader.frame_rate
    if rate <= 0:
        reader._credit = math.inf
    else:
        now = reader.loop.time()
        reader._credit = refilled(reader._credit, reader._stamp, now, rate)
        reader._stamp = now
    open_room(reader)


def open_room(reader: MeteredReader) -> None:
    """How much of a read may be parsed at once, now. Only once the accept is out: until
    then the room stays shut (-1, as each engine starts it), so a read before it takes the
    slow path, where the engine's handshake state decides."""
    if reader._stash is not None or reader._linger_left is not None or reader._backed_up:
        reader._room = -1
    elif reader.frame_rate <= 0:
        reader._room = NO_BUDGET
    else:
        reader._room = room(reader._credit)


def budget_spent(reader: MeteredReader) -> None:
    """A read used the budget up: refilled to now, and throttled if that brought nothing."""
    if reader._linger_left is not None or reader.transport.is_closing():
        return  # nothing more is parsed anyway
    refill(reader)
    if reader._credit <= 0:
        throttle(reader, b"")


def throttle(reader: MeteredReader, rest: bytes) -> None:
    """Stop reading this peer until its budget has come back; ``rest`` waits unparsed."""
    reader._stash = rest
    reader._room = -1
    reader._behind = True
    reader.transport.pause_reading()
    reader._read_paused = False  # ours now: the app's next receive() must not resume it
    wait = throttle_wait(reader.frame_rate, reader._credit)
    reader._throttle = reader.loop.call_later(wait, unthrottle, reader)


def unthrottle(reader: MeteredReader) -> None:
    reader._throttle = None
    if reader.transport.is_closing():
        return
    refill(reader)
    feed_stash(reader)


def feed_stash(reader: MeteredReader) -> None:
    """Parse what waited (throttled, or sent before the accept), then read on unless a
    message waits for the app (its receive() resumes reading) or the budget is spent
    again."""
    stash, reader._stash = reader._stash, None
    open_room(reader)
    if stash:
        reader._received_slowly(stash)
    if reader._stash is not None or reader._linger_left is not None:
        return
    if reader.transport.is_closing():
        return
    if not reader._inbox.empty():
        reader._read_paused = True
    elif not reader._read_paused:
        reader.transport.resume_reading()


def stop_throttle(reader: MeteredReader) -> None:
    if reader._throttle is not None:
        reader._throttle.cancel()
        reader._throttle = None
    reader._stash = None


# -- Closing -----------------------------------------------------------------------------


def let_go_slow(reader: MeteredReader) -> None:
    """A peer that sends pings and does not read the pongs (RSS grew 405 MiB in 8 s):
    released like a slow consumer. Each engine checks after a parse, on the slow path that
    ``pause_writing`` sends reads to, whether its write buffer is past ``send_buffer_bytes``."""
    reader._slow = True
    log.warning("ws_slow_consumer", extra={"why": "replies to its pings unsent"})
    reader.transport.abort()


def linger(
    reader: MeteredReader, close_timer: asyncio.TimerHandle | None, max_size: int
) -> asyncio.TimerHandle:
    """The client broke the protocol (a frame over the size limit, say) and its close frame
    is written: stop writing, and keep reading and discarding (up to ``LINGER_BYTES``, or
    ``max_size`` if larger) for ``LINGER_SECONDS`` before closing. Closing at once while the
    client is still sending makes the kernel answer with a reset, which can destroy the
    close frame before the client reads it (a client that reads once its frame is sent saw
    the 1009 in 202 of 300 tries). ``close_timer``, the engine's, is replaced: the timer
    returned closes the socket."""
    transport = reader.transport
    if transport.can_write_eof():
        transport.write_eof()
    throttled = reader._throttle is not None
    stop_throttle(reader)
    reader._linger_left = max(close_budget.LINGER_BYTES, max_size)
    reader._room = -1
    if reader._read_paused or throttled:
        reader._read_paused = False
        transport.resume_reading()
    if close_timer is not None:
        close_timer.cancel()
    return reader.loop.call_later(close_budget.LINGER_SECONDS, transport.close)
