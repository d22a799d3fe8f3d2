"""One HTTP/1.1 exchange with the backend — a request and its response on one connection — as
a state machine without I/O: the request's bytes out (``request``, ``body_piece``,
``body_end``), the response's bytes in (``feed``, ``feed_eof``), events out (``ResponseHead``,
``BodyPiece``, ``ResponseEnd``, ``Violation``, ``ClosedEarly``), and the verdict on the
connection it ran on (``reusable``). The response is parsed by httptools (the parser uvicorn
uses); ``UpstreamConnection`` only moves bytes between its socket and the exchange.

**The pool's one rule** (a desynced pooled connection is request smuggling: the next request
written on it is read by the backend as the body of the last one): a connection goes back to
the pool only after a *complete exchange* — every request body byte its head promised was
written, and the response was read to its end with framing the parser fully accounted for
(a Content-Length or chunked body, or none by status or method), keep-alive on both sides,
and not one byte more. Every other exit — the client leaving, an early response with the
body unsent, a timeout, a parse error, extra or unexpected bytes, cancellation, an exception
anywhere — closes it. ``HttpExchange.reusable`` is that rule for what the bytes said; it also
refuses an exchange whose response was a 5xx (such a connection is retired, not pooled: see
``pool.py``). ``UpstreamConnection.reusable`` adds what only the socket knows (still open,
the response body all taken); ``UpstreamPool.release`` is the only way back into the pool.

Any cut of the same bytes gives the same events and verdict, but for two cases llhttp reads
past a complete response without a callback: empty lines (CRLF) after it, and chunk framing
after a HEAD response's headers. In the same read they pass unseen; in a later one they are a
violation (tests/unit/adapters/proxy/test_exchange.py pins both, as they have always been).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import httptools

Header = tuple[bytes, bytes]

# The chunk that ends a chunked request body (no trailers are sent).
LAST_CHUNK: Final = b"0\r\n\r\n"


# -- events --------------------------------------------------------------------------------


@dataclass(slots=True)
class ResponseHead:
    """The final response's status and headers (interim 1xx responses are skipped).

    ``headers`` is the list the exchange goes on filling: the trailers of a chunked body are
    appended to it as they arrive (as they always were, so a response that arrived whole
    before it was relayed has its trailers relayed as headers)."""

    status: int
    headers: list[Header]


@dataclass(slots=True)
class BodyPiece:
    """Response body bytes, framing removed (how they are cut depends on how they arrived)."""

    data: bytes


@dataclass(slots=True)
class ResponseEnd:
    """The response is complete: its framing, its status or the request's method says so, or
    the backend closed a response delimited by the connection closing."""


@dataclass(slots=True)
class Violation:
    """The backend sent what the response's framing does not account for: nothing of the
    response is trusted and the connection is to be closed. Nothing follows it."""

    reason: str


@dataclass(slots=True)
class ClosedEarly:
    """The connection closed before the response was complete."""


Event = ResponseHead | BodyPiece | ResponseEnd | Violation | ClosedEarly

# Events without fields, made once.
RESPONSE_END: Final = ResponseEnd()
CLOSED_EARLY: Final = ClosedEarly()


class HttpExchange:
    """One request and its response. Made for each request written (a retry is a new one);
    every piece of its state is set here, in ``__init__``, and nowhere else at its start.

    ``head_request``: the request is a HEAD (its response has no body, whatever its headers
    say). ``body_length``: the request's Content-Length, or None. ``chunked``: the request body
    goes chunked (then ``body_length`` is None). ``streams_body``: the body follows the head
    piece by piece (``body_piece``, then ``body_end``); otherwise it goes whole with the head,
    or there is none, and the request side is complete from the start."""

    __slots__ = (
        "_chunked",
        "_eof_delimited",
        "_events",
        "_final_begun",
        "_framed",
        "_head_request",
        "_headers",
        "_keep_alive",
        "_length",
        "_parser",
        "_written",
        "closed",
        "message_complete",
        "received_any",
        "request_complete",
        "status",
        "violation",
    )

    def __init__(
        self,
        head_request: bool = False,
        body_length: int | None = None,
        chunked: bool = False,
        streams_body: bool = False,
    ) -> None:
        # -- the request side
        self._head_request = head_request
        self._length = body_length
        self._chunked = chunked
        self._written = 0
        # Every body byte the request head promised has been handed out to be written.
        self.request_complete = not streams_body
        # -- the response side
        # Made at the first byte, let go once nothing more is to be parsed: its callbacks are
        # this exchange's methods, and the cycle would otherwise be left, once a request, to
        # the collector, which the gateway runs rarely (app/server.py).
        self._parser: httptools.HttpResponseParser | None = None
        self._events: list[Event] = []
        self._headers: list[Header] = []
        self._final_begun = False
        # Any byte arrived since the request was written (a retry is considered only without).
        self.received_any = False
        self.message_complete = False
        # llhttp answers should_keep_alive() only inside its callbacks, so it is kept here.
        self._keep_alive = False
        # Exactly one way of knowing where the body ends (see on_headers_complete).
        self._framed = False
        # No Content-Length, not chunked: the body ends where the connection does.
        self._eof_delimited = False
        # The final response's status (0 until its head).
        self.status = 0
        # Anything the parser could not account for: the response is not trusted, the
        # connection is closed.
        self.violation: str | None = None
        # The connection closed (an orderly close or a reset) during the exchange.
        self.closed = False

    # -- the verdict -------------------------------------------------------------------------

    @property
    def ended_cleanly(self) -> bool:
        """Complete on both sides with nothing left over: the request body all sent, the
        response read to the end its framing (or its status, or the HEAD) set, keep-alive on
        both sides, no byte the framing does not account for, no upgrade, the connection not
        closed. Everything ``reusable`` asks but the status."""
        return (
            self.request_complete
            and self.message_complete
            and self._framed
            and self._keep_alive
            and self.violation is None
            and not self.closed
        )

    @property
    def reusable(self) -> bool:
        """The connection may carry another request: the exchange ended cleanly and its
        response was not a 5xx (a backend that answered 5xx may be about to close it)."""
        return self.ended_cleanly and self.status < 500

    # -- bytes out ---------------------------------------------------------------------------

    def request(self, head: bytes, body: bytes = b"") -> bytes:
        """The bytes that open the exchange: ``head`` (the request line and the headers, each
        line ending in CRLF, without the body's framing header), the framing header, the blank
        line, and ``body`` when it goes whole with the head."""
        if self._chunked:
            framing = b"transfer-encoding: chunked\r\n\r\n"
        elif self._length is not None:
            framing = b"content-length: %d\r\n\r\n" % self._length
        else:
            framing = b"\r\n"
        return b"".join((head, framing, body))

    def body_piece(self, data: bytes) -> bytes:
        """The bytes that carry ``data``, the next piece of a streamed request body. An empty
        piece is no bytes: chunked, it would be the last chunk, and what follows it would be
        read by the backend as another request."""
        if not data:
            return b""
        self._written += len(data)
        return b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data

    def body_end(self) -> bytes:
        """The bytes that end a streamed request body (none for a Content-Length one). Only now
        is the request side complete, and only if the lengths agree."""
        self.request_complete = self._chunked or self._written == self._length
        return LAST_CHUNK if self._chunked else b""

    # -- bytes in ----------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Event]:
        """Bytes from the backend; the events they complete."""
        self.received_any = True
        if self.violation is not None or self.closed:
            return []  # nothing follows a violation (its connection is being closed)
        if self.message_complete:
            # Nothing is expected: bytes after a complete response, or a body after a HEAD
            # response's headers. The backend and we disagree on framing.
            self._violate("the backend sent bytes outside a response")
        else:
            parser = self._parser
            if parser is None:
                parser = self._parser = httptools.HttpResponseParser(self)
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self._violate("the backend switched protocols")
            except httptools.HttpParserError as exc:
                self._violate(f"malformed response from the backend: {exc}")
            if self.message_complete or self.violation is not None:
                self._parser = None
        events, self._events = self._events, []
        return events

    def feed_eof(self, reset: bool = False) -> list[Event]:
        """The connection closed (``reset``: not in order, so a body it delimits is cut)."""
        if self.closed:
            return []
        self.closed = True
        self._parser = None
        if self.violation is not None or self.message_complete:
            return []
        if self._eof_delimited and not reset:
            self.message_complete = True
            return [RESPONSE_END]
        return [CLOSED_EARLY]

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._final_begun or self.message_complete:
            self._violate("the backend sent a second response to one request")

    def on_header(self, name: bytes, value: bytes | None) -> None:
        if self.violation is None:
            self._headers.append((name, value or b""))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None  # noqa: S101  # callbacks come from the parser
        if self.violation is not None:
            return
        status = parser.get_status_code()
        if status == 101:
            self._violate("the backend switched protocols")  # we never ask it to
            return
        if 100 <= status < 200:
            self._headers = []  # an interim response (100 Continue): wait for the real one
            return
        self._final_begun = True
        self.status = status
        self._keep_alive = parser.should_keep_alive()
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
        self._events.append(ResponseHead(status, self._headers))
        if bodiless:
            self.message_complete = True
            self._events.append(RESPONSE_END)

    def on_body(self, body: bytes) -> None:
        if self.message_complete or self.violation is not None:
            self._violate("the backend sent a body where none belongs")
            return
        self._events.append(BodyPiece(body))

    def on_message_complete(self) -> None:
        parser = self._parser
        assert parser is not None  # noqa: S101  # callbacks come from the parser
        if self.violation is not None or 100 <= parser.get_status_code() < 200:
            return
        self._keep_alive = self._keep_alive and parser.should_keep_alive()
        if not self.message_complete:  # a 204/304 or a HEAD's response ended at its head
            self.message_complete = True
            self._events.append(RESPONSE_END)

    def _violate(self, reason: str) -> None:
        if self.violation is None:
            self.violation = reason
            self._events.append(Violation(reason))
