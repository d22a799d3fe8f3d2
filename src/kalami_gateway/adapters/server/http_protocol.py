"""uvicorn's httptools protocol with the limits nginx has and it lacks: a deadline for a
request's line and headers, and bounds on their size.

Measured on the landed gateway (issue 11): 500 connections sending one header byte a second
were all still open after 30 s; 10 MB of headers were accepted; a 30 KB request line on
``/ws`` got no byte back and the socket was never closed. Now, for every route and every
WebSocket handshake (the upgrade request is parsed here first):

- the line and headers of a request must have arrived within ``header_timeout`` of its first
  byte (of the connection, for the first request) → 408;
- a request line over ``MAX_REQUEST_LINE`` bytes → 414;
- headers over ``max_header_bytes`` in total, one header line over 16 KiB, or more than 100
  headers → 431;

each answered with a JSON body and ``Connection: close``, then the socket is closed. The
checks are a few integer additions per parser callback: the proxy's speed is unchanged.

Bytes are budgeted where they arrive, before the parser works on them (issue 24):

- a request head is fed to the parser in pieces of ``HEAD_PIECE`` bytes, each counted, so a
  line that never ends (httptools only calls back at its end, concatenating meanwhile) is
  refused with 431 once the head's raw bytes pass what its limits allow — not at the
  deadline after 100+ MiB. A body is fed whole, as before;
- at most ``MAX_PIPELINED`` requests wait behind the one being answered; the rest of what
  the client sent stays unparsed (one read at most) and reading stays paused until the
  queue has drained, so TCP pushes back on a client that pipelines without reading;
- outside ``/api`` (whose uploads have deadlines of their own) a request body must arrive
  whole within ``header_timeout`` of its head (else 408, or the connection is closed if
  the answer has begun): the gateway's own routes take small bodies;
- a body still arriving when its answer is complete (a route that does not read it: a
  404, a refusal) is not drained at the client's pace: the connection is closed;
- bytes that follow a WebSocket handshake in the same read (frames a client sent without
  waiting for the 101) are handed to the WebSocket protocol, which answers them after it.

And past the process's ceiling of client sockets (``adapters/capacity.py``) a WebSocket
handshake is answered 503 with ``Retry-After``, before any upgrade; other requests are
served as usual (the health probes, ``/stats`` and ``/metrics`` keep answering).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kalami_gateway.adapters.capacity import RETRY_AFTER_SECONDS, SocketCapacity
from kalami_gateway.adapters.errors import error_body

MAX_REQUEST_LINE: Final = 16 * 1024
# The WebSocket handshake is parsed again by websockets, which fails (and uvicorn then hangs)
# past 16 KiB in one header line or 128 headers: refused here first, with a status.
MAX_HEADER_LINE: Final = 16 * 1024
MAX_HEADER_COUNT: Final = 100
# A request head is parsed at most this much at a time, its raw size counted between pieces.
HEAD_PIECE: Final = 1024
# Requests parsed and waiting behind the one being answered (pipelining) before the rest of
# the client's bytes are left unparsed.
MAX_PIPELINED: Final = 4
# A connection closed while its client is still sending is read and discarded this long first
# (so its last answer is not destroyed by a reset), then closed.
LINGER_SECONDS: Final = 2.0
_REASONS: Final = {
    408: (b"Request Timeout", error_body(408, "Request headers timed out")),
    414: (b"URI Too Long", error_body(414, "Request line too long")),
    431: (b"Request Header Fields Too Large", error_body(431, "Request headers too large")),
    503: (
        b"Service Unavailable",
        error_body(503, "Server at its connection limit: try again shortly"),
    ),
}
_RETRY_AFTER: Final = b"retry-after: %d\r\n" % RETRY_AFTER_SECONDS


def refusal(status: int, body: bytes | None = None) -> bytes:
    """A refusal's whole answer: its status, a JSON body (``body``, or the status's own), and
    ``Connection: close`` (503: ``Retry-After`` too)."""
    reason, default = _REASONS[status]
    body = default if body is None else body
    retry = _RETRY_AFTER if status == 503 else b""
    return (
        b"HTTP/1.1 %d %b\r\ncontent-type: application/json\r\n%bcontent-length: %d\r\n"
        b"connection: close\r\n\r\n%b" % (status, reason, retry, len(body), body)
    )


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a request that was just refused."""


class GuardedHttpProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0
    max_header_bytes: int = 32 * 1024
    capacity: SocketCapacity | None = None  # None: no ceiling

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._line_bytes = 0
        self._header_bytes = 0
        self._header_count = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._in_body = False  # between a head and the end of its message
        self._head_raw = 0  # raw bytes of the head being read
        self._unread: bytes | None = None  # behind a full pipeline, in arrival order
        self._body_timer: asyncio.TimerHandle | None = None
        # What a head may take in raw bytes: its line, its headers, their line ends, a piece.
        self._head_budget = MAX_REQUEST_LINE + self.max_header_bytes + 4 * MAX_HEADER_COUNT
        self._head_budget += HEAD_PIECE

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a request is timed out too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stop_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._unread is not None:  # requests wait behind a full pipeline: keep the order
            self._unread += data
            self.flow.pause_reading()
            return
        self._unset_keepalive_if_required()
        if self._in_body:  # a body: fed whole (the common case of an upload)
            self._feed(data, 0)
            return
        size, start = len(data), 0
        while start < size:
            if self._in_body:
                end = size
            else:
                end = min(size, start + HEAD_PIECE)
                self._head_raw += end - start
                if self._head_raw > self._head_budget:
                    self._refuse_quietly(431)
                    return
            if not self._feed(data, start, end):
                return
            start = end
            if len(self.pipeline) >= MAX_PIPELINED and start < size:
                self._unread = data[start:]
                self.flow.pause_reading()
                return

    def _feed(self, data: bytes, start: int, end: int | None = None) -> bool:
        """Parse ``data[start:end]``; False once nothing more of it is this protocol's (a
        refusal, a parse error, an upgrade)."""
        whole = start == 0 and (end is None or end >= len(data))
        piece: bytes | memoryview = data if whole else memoryview(data)[start:end]
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return False
        except httptools.HttpParserUpgrade as upgrade:
            if not self._should_upgrade():
                self._unsupported_upgrade_warning()
                return False
            if self.capacity is not None and not self.capacity.admits_websocket():
                self._answer(503)
                return False
            # What the client sent behind its handshake in the same read (frames it did not
            # wait for the 101 to send) is the WebSocket protocol's, which keeps it until its
            # accept is out (uvicorn drops it).
            behind = bytes(piece[upgrade.args[0] :]) + (data[end:] if end is not None else b"")
            self.handle_websocket_upgrade()
            if behind and not self.transport.is_closing():
                cast("asyncio.Protocol", self.transport.get_protocol()).data_received(behind)
            return False
        return not self._refused

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._in_body and not self.transport.is_closing():
            # Answered before its body was read: nobody will read the rest. Close rather than
            # drain it at the client's pace — after a short linger that discards what still
            # comes, so the answer is not destroyed by a reset.
            self._stop_body_timer()
            self._linger()
            return
        unread = self._unread
        if unread is None or self.transport.is_closing():
            return
        if len(self.pipeline) >= MAX_PIPELINED:
            self.flow.pause_reading()  # uvicorn resumed it: the queue is still full
            return
        self._unread = None
        self.data_received(unread)
        if self._unread is not None or self.pipeline:
            self.flow.pause_reading()

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        # The connection is the WebSocket protocol's now and this one never hears of it again
        # (no connection_lost, where uvicorn itself lets go of the parser): the parser, which
        # holds this protocol's callbacks, would keep both alive as cyclic garbage until a full
        # collection.
        self._disarm()
        self.parser = None  # type: ignore[assignment]

    def send_400_response(self, msg: str) -> None:
        if self._refused:
            return  # the parser stopped because we refused the request: answered already
        super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._line_bytes = self._header_bytes = self._header_count = 0
        self._arm()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_body = False
        self._head_raw = 0
        self._stop_body_timer()

    def on_url(self, url: bytes) -> None:
        self._line_bytes += len(url)
        if self._line_bytes > MAX_REQUEST_LINE:
            self._refuse(414)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        line = len(name) + len(value) + 4
        self._header_bytes += line
        self._header_count += 1
        if (
            self._header_bytes > self.max_header_bytes
            or line > MAX_HEADER_LINE
            or self._header_count > MAX_HEADER_COUNT
        ):
            self._refuse(431)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._in_body = True
        super().on_headers_complete()
        raw_path: bytes = self.scope.get("raw_path", b"")  # absent for an upgrade
        if raw_path and not (raw_path == b"/api" or raw_path.startswith(b"/api/")):
            self._body_timer = self.loop.call_later(self.header_timeout, self._body_timed_out)

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self._refused or self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()
            return
        self._answer(408, error_body(408, "Request body timed out"))

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _timed_out(self) -> None:
        self._header_timer = None
        if not self._refused and not self.transport.is_closing():
            self._answer(408)

    def _refuse(self, status: int) -> None:
        self._answer(status)
        raise _Refused(status)

    def _linger(self) -> None:
        self._refused = True  # from now on what arrives is discarded
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _refuse_quietly(self, status: int) -> None:
        """Refuse outside a parser callback (nothing to unwind)."""
        if not self._refused:
            self._answer(status)

    def _answer(self, status: int, body: bytes | None = None) -> None:
        self._refused = True
        self._disarm()
        self._stop_body_timer()
        self.transport.write(refusal(status, body))
        self._linger()


def guarded_http_protocol(
    header_timeout: float, max_header_bytes: int, capacity: SocketCapacity | None = None
) -> type[GuardedHttpProtocol]:
    """The protocol class uvicorn is given, with this gateway's limits."""
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {
            "header_timeout": header_timeout,
            "max_header_bytes": max_header_bytes,
            "capacity": capacity,
        },
    )
