"""The HTTP/1.1 exchange with the backend, byte by byte and without sockets: every response
framing and every hostile answer the proxy attack tests send (tests/integration/
test_proxy_attacks.py, test_proxy_pool_property.py), each fed whole, byte by byte and split in
two at every offset, with the events it gives and the verdict on its connection — above all
``reusable``, the line that keeps one client's request out of another's exchange."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kalami_gateway.adapters.proxy.exchange import (
    LAST_CHUNK,
    BodyPiece,
    ClosedEarly,
    Event,
    HttpExchange,
    ResponseEnd,
    ResponseHead,
    Violation,
)

# What a list of events says, however the bytes were cut: body pieces joined, a violation
# without its reason (which says where it was seen, and that depends on the cut).
Summary = list[tuple[object, ...]]


def summary(events: list[Event]) -> Summary:
    said: Summary = []
    for event in events:
        if isinstance(event, ResponseHead):
            said.append(("head", event.status, list(event.headers)))
        elif isinstance(event, BodyPiece):
            if said and said[-1][0] == "body":
                joined = said[-1][1]
                assert isinstance(joined, bytes)
                said[-1] = ("body", joined + event.data)
            else:
                said.append(("body", event.data))
        elif isinstance(event, ResponseEnd):
            said.append(("end",))
        elif isinstance(event, Violation):
            said.append(("violation",))
        elif isinstance(event, ClosedEarly):
            said.append(("closed early",))
    return said


@dataclass(frozen=True)
class Verdict:
    reusable: bool
    ended_cleanly: bool


def verdict_of(exchange: HttpExchange) -> Verdict:
    return Verdict(exchange.reusable, exchange.ended_cleanly)


REUSABLE = Verdict(reusable=True, ended_cleanly=True)
RETIRED = Verdict(reusable=False, ended_cleanly=True)  # clean, but a 5xx: never pooled again
CLOSED = Verdict(reusable=False, ended_cleanly=False)


def run(
    pieces: list[bytes], head_request: bool = False, eof: bool = False, reset: bool = False
) -> tuple[HttpExchange, list[Event]]:
    """A bodiless request's exchange fed ``pieces``, then (``eof``) the connection's close."""
    exchange = HttpExchange(head_request=head_request)
    events: list[Event] = []
    for piece in pieces:
        events += exchange.feed(piece)
    if eof:
        events += exchange.feed_eof(reset=reset)
    return exchange, events


def cuts(data: bytes) -> Iterator[list[bytes]]:
    """``data`` whole, byte by byte, and in two at every offset (past 2 KiB, at every n-th
    offset that keeps it to about 2048 cuts: the 64 KiB head)."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for i in range(1, len(data), max(1, len(data) // 2048)):
        yield [data[:i], data[i:]]


def response(status: bytes, *headers: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"HTTP/%b %b\r\n%b\r\n%b" % (
        version,
        status,
        b"".join(h + b"\r\n" for h in headers),
        body,
    )


OK_HELLO = response(b"200 OK", b"Content-Length: 5", body=b"hello")
SMUGGLED = response(b"200 OK", b"Set-Cookie: injected=1", b"Content-Length: 0")


@dataclass(frozen=True)
class Case:
    data: bytes
    said: Summary
    verdict: Verdict
    head_request: bool = False
    eof: bool = False
    reset: bool = False


def head(status: int, *headers: tuple[bytes, bytes]) -> tuple[object, ...]:
    return ("head", status, list(headers))


CL5 = (b"Content-Length", b"5")
CHUNKED = (b"Transfer-Encoding", b"chunked")
BODY_HELLO = ("body", b"hello")
END = ("end",)
VIOLATION = ("violation",)
CLOSED_EARLY = ("closed early",)

FRAMINGS = {
    "content-length": Case(OK_HELLO, [head(200, CL5), BODY_HELLO, END], REUSABLE),
    "content-length 0": Case(
        response(b"200 OK", b"Content-Length: 0"),
        [head(200, (b"Content-Length", b"0")), END],
        REUSABLE,
    ),
    "chunked, with extensions and trailers": Case(
        response(
            b"200 OK",
            b"Transfer-Encoding: chunked",
            body=b'5;ext=1\r\nhello\r\n6;a=b;c="d"\r\n world\r\n0;last\r\nX-Sum: 9\r\n\r\n',
        ),
        # The trailers join the head's headers (as they always did).
        [head(200, CHUNKED, (b"X-Sum", b"9")), ("body", b"hello world"), END],
        REUSABLE,
    ),
    "chunked after another coding": Case(
        response(b"200 OK", b"Transfer-Encoding: gzip, chunked", body=b"2\r\nok\r\n0\r\n\r\n"),
        [head(200, (b"Transfer-Encoding", b"gzip, chunked")), ("body", b"ok"), END],
        REUSABLE,
    ),
    "close-delimited": Case(
        response(b"200 OK", body=b"all of it"),
        [head(200), ("body", b"all of it"), END],
        CLOSED,
        eof=True,
    ),
    "close-delimited, cut by a reset": Case(
        response(b"200 OK", body=b"all of it"),
        [head(200), ("body", b"all of it"), CLOSED_EARLY],
        CLOSED,
        eof=True,
        reset=True,
    ),
    "close-delimited, Connection: close": Case(
        response(b"200 OK", b"Connection: close", body=b"abc"),
        [head(200, (b"Connection", b"close")), ("body", b"abc"), END],
        CLOSED,
        eof=True,
    ),
    "HEAD, with the length of the body it does not send": Case(
        response(b"200 OK", b"Content-Length: 11"),
        [head(200, (b"Content-Length", b"11")), END],
        REUSABLE,
        head_request=True,
    ),
    "HEAD, chunked": Case(
        response(b"200 OK", b"Transfer-Encoding: chunked"),
        [head(200, CHUNKED), END],
        REUSABLE,
        head_request=True,
    ),
    "204 with a Content-Length": Case(
        response(b"204 No Content", b"Content-Length: 5"),
        [head(204, CL5), END],
        REUSABLE,
    ),
    "204 without a length": Case(response(b"204 No Content"), [head(204), END], REUSABLE),
    "304 without a length": Case(
        response(b"304 Not Modified", b"ETag: x"), [head(304, (b"ETag", b"x")), END], REUSABLE
    ),
    "304 with the Content-Length of another response": Case(
        response(b"304 Not Modified", b"Content-Length: 100"),
        [head(304, (b"Content-Length", b"100")), END],
        REUSABLE,
    ),
    "1xx interim responses, then the final one": Case(
        response(b"100 Continue")
        + response(b"103 Early Hints", b"Link: </a.css>")
        + response(b"199 Whatever")
        + OK_HELLO,
        [head(200, CL5), BODY_HELLO, END],
        REUSABLE,
    ),
    "HTTP/1.0 with a length": Case(
        response(b"200 OK", b"Content-Length: 5", body=b"hello", version=b"1.0"),
        [head(200, CL5), BODY_HELLO, END],
        CLOSED,
    ),
    "HTTP/1.0 kept alive": Case(
        response(
            b"200 OK",
            b"Connection: keep-alive",
            b"Content-Length: 5",
            body=b"hello",
            version=b"1.0",
        ),
        [head(200, (b"Connection", b"keep-alive"), CL5), BODY_HELLO, END],
        REUSABLE,
    ),
    "Connection: close": Case(
        response(b"200 OK", b"Connection: close", b"Content-Length: 5", body=b"hello"),
        [head(200, (b"Connection", b"close"), CL5), BODY_HELLO, END],
        CLOSED,
    ),
    "a 499 is not a 5xx": Case(
        response(b"499 Client Closed", b"Content-Length: 5", body=b"hello"),
        [head(499, CL5), BODY_HELLO, END],
        REUSABLE,
    ),
    "500": Case(
        response(b"500 Internal Server Error", b"Content-Length: 5", body=b"hello"),
        [head(500, CL5), BODY_HELLO, END],
        RETIRED,
    ),
    "503": Case(
        response(b"503 Service Unavailable", b"Content-Length: 0"),
        [head(503, (b"Content-Length", b"0")), END],
        RETIRED,
    ),
    "500 with Connection: close": Case(
        response(b"500 Oops", b"Connection: close", b"Content-Length: 0"),
        [head(500, (b"Connection", b"close"), (b"Content-Length", b"0")), END],
        CLOSED,
    ),
    "a large head (the backend's head has no size limit)": Case(
        response(b"200 OK", b"X-Big: " + b"a" * 65536, b"Content-Length: 5", body=b"hello"),
        [head(200, (b"X-Big", b"a" * 65536), CL5), BODY_HELLO, END],
        REUSABLE,
    ),
}

HOSTILE = {
    "a second response smuggled after the first": Case(
        OK_HELLO + SMUGGLED, [head(200, CL5), BODY_HELLO, END, VIOLATION], CLOSED
    ),
    "extra bytes after the body": Case(
        OK_HELLO + b"XYZ", [head(200, CL5), BODY_HELLO, END, VIOLATION], CLOSED
    ),
    "a body after a HEAD response": Case(
        response(b"200 OK", b"Content-Length: 11", body=b"not-for-you"),
        [head(200, (b"Content-Length", b"11")), END, VIOLATION],
        CLOSED,
        head_request=True,
    ),
    "bytes after a 204": Case(
        response(b"204 No Content", body=b"junk"), [head(204), END, VIOLATION], CLOSED
    ),
    "101 Switching Protocols": Case(
        response(b"101 Switching Protocols", b"Connection: upgrade", b"Upgrade: x"),
        [VIOLATION],
        CLOSED,
    ),
    "a chunk size that is no number": Case(
        response(b"200 OK", b"Transfer-Encoding: chunked", body=b"zz\r\nok\r\n0\r\n\r\n"),
        [head(200, CHUNKED), VIOLATION],
        CLOSED,
    ),
    "a chunk size that overflows": Case(
        response(b"200 OK", b"Transfer-Encoding: chunked", body=b"f" * 19 + b"\r\n"),
        [head(200, CHUNKED), VIOLATION],
        CLOSED,
    ),
    "a chunk longer than its size": Case(
        response(b"200 OK", b"Transfer-Encoding: chunked", body=b"2\r\nokX\r\n0\r\n\r\n"),
        [head(200, CHUNKED), ("body", b"ok"), VIOLATION],
        CLOSED,
    ),
    "the same Content-Length twice": Case(
        response(b"200 OK", b"Content-Length: 5", b"Content-Length: 5", body=b"hello"),
        [VIOLATION],
        CLOSED,
    ),
    "conflicting Content-Lengths": Case(
        response(b"200 OK", b"Content-Length: 5", b"Content-Length: 6", body=b"hello!"),
        [VIOLATION],
        CLOSED,
    ),
    "a Content-Length list": Case(
        response(b"200 OK", b"Content-Length: 5, 5", body=b"hello"), [VIOLATION], CLOSED
    ),
    "a negative Content-Length": Case(
        response(b"200 OK", b"Content-Length: -1", body=b"hello"), [VIOLATION], CLOSED
    ),
    "Transfer-Encoding and Content-Length": Case(
        response(b"200 OK", b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        [VIOLATION],
        CLOSED,
    ),
    "chunked twice": Case(
        response(
            b"200 OK",
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: chunked",
            body=b"2\r\nok\r\n0\r\n\r\n",
        ),
        [head(200, CHUNKED, CHUNKED), ("body", b"ok"), END],
        CLOSED,  # two ways of knowing where the body ends: not trusted with another request
    ),
    "another coding in a header of its own, then chunked": Case(
        response(
            b"200 OK",
            b"Transfer-Encoding: gzip",
            b"Transfer-Encoding: chunked",
            body=b"2\r\nok\r\n0\r\n\r\n",
        ),
        [head(200, (b"Transfer-Encoding", b"gzip"), CHUNKED), ("body", b"ok"), END],
        CLOSED,
    ),
    "chunked, then another coding (close-delimited)": Case(
        response(b"200 OK", b"Transfer-Encoding: chunked, gzip", body=b"2\r\nok\r\n0\r\n\r\n"),
        [head(200, (b"Transfer-Encoding", b"chunked, gzip")), ("body", b"2\r\nok\r\n0\r\n\r\n")],
        CLOSED,
    ),
    "a truncated Content-Length body": Case(
        response(b"200 OK", b"Content-Length: 10", body=b"hello"),
        [head(200, (b"Content-Length", b"10")), BODY_HELLO, CLOSED_EARLY],
        CLOSED,
        eof=True,
    ),
    "a truncated chunked body": Case(
        response(b"200 OK", b"Transfer-Encoding: chunked", body=b"a\r\nhello"),
        [head(200, CHUNKED), BODY_HELLO, CLOSED_EARLY],
        CLOSED,
        eof=True,
    ),
    "a truncated head": Case(b"HTTP/1.1 200 OK\r\nContent-", [CLOSED_EARLY], CLOSED, eof=True),
    "a malformed status code": Case(b"HTTP/1.1 2OO OK\r\n\r\n", [VIOLATION], CLOSED),
    "not HTTP at all": Case(b"SSH-2.0-OpenSSH_9.6\r\n", [VIOLATION], CLOSED),
    "bare LF line ends": Case(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", [VIOLATION], CLOSED),
    "a space before a header's colon": Case(
        response(b"200 OK", b"Content-Length : 5", body=b"hello"), [VIOLATION], CLOSED
    ),
    "a folded header line": Case(
        response(b"200 OK", b"Content-Length: 5", b" folded", body=b"hello"),
        [VIOLATION],
        CLOSED,
    ),
    "the connection closing after a complete response": Case(
        OK_HELLO, [head(200, CL5), BODY_HELLO, END], CLOSED, eof=True
    ),
}

CASES = FRAMINGS | HOSTILE


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_every_cut_of_a_response_gives_its_events_and_its_verdict(case: Case) -> None:
    for pieces in cuts(case.data):
        exchange, events = run(pieces, case.head_request, case.eof, case.reset)
        assert summary(events) == case.said, [len(p) for p in pieces]
        assert verdict_of(exchange) == case.verdict, [len(p) for p in pieces]


def test_a_violation_says_what_the_backend_did() -> None:
    reasons = {
        "second": (OK_HELLO + SMUGGLED, "the backend sent a second response to one request"),
        "switch": (response(b"101 Switching Protocols"), "the backend switched protocols"),
        "malformed": (b"HTTP/1.1 2OO OK\r\n\r\n", "malformed response from the backend: "),
    }
    for data, reason in reasons.values():
        _, events = run([data])
        assert isinstance(events[-1], Violation)
        assert events[-1].reason.startswith(reason)
    _, events = run([OK_HELLO, b"X"])
    assert events[-1] == Violation("the backend sent bytes outside a response")
    _, events = run([OK_HELLO], head_request=True)
    assert events[-1] == Violation("the backend sent a body where none belongs")


def test_nothing_follows_a_violation() -> None:
    exchange, _ = run([OK_HELLO + SMUGGLED])
    assert exchange.feed(OK_HELLO) == []
    assert exchange.feed_eof() == []
    assert exchange.violation == "the backend sent a second response to one request"
    assert verdict_of(exchange) == CLOSED


def test_bytes_long_after_a_complete_response_are_a_violation() -> None:
    exchange, _ = run([OK_HELLO])
    assert exchange.reusable
    assert exchange.feed(b"HTTP/1.1 200 OK\r\n") == [
        Violation("the backend sent bytes outside a response")
    ]
    assert not exchange.reusable


def test_received_any_says_whether_one_byte_of_answer_came() -> None:
    exchange = HttpExchange()
    assert not exchange.received_any
    exchange.feed_eof()
    assert not exchange.received_any  # closed with no byte of answer: a GET may be retried
    exchange = HttpExchange()
    exchange.feed(b"H")
    assert exchange.received_any


# -- the request side -------------------------------------------------------------------------


def test_the_request_head_gets_the_framing_of_its_body() -> None:
    head = b"POST /x HTTP/1.1\r\nhost: b\r\n"
    assert HttpExchange().request(head) == head + b"\r\n"
    assert HttpExchange(body_length=2).request(head, b"{}") == (
        head + b"content-length: 2\r\n\r\n{}"
    )
    streamed = HttpExchange(body_length=300_000, streams_body=True)
    assert streamed.request(head) == head + b"content-length: 300000\r\n\r\n"
    chunked = HttpExchange(chunked=True, streams_body=True)
    assert chunked.request(head) == head + b"transfer-encoding: chunked\r\n\r\n"


def test_a_chunked_body_is_framed_piece_by_piece_and_never_ended_early() -> None:
    exchange = HttpExchange(chunked=True, streams_body=True)
    assert exchange.body_piece(b"hello") == b"5\r\nhello\r\n"
    assert exchange.body_piece(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert exchange.body_piece(b"") == b""  # not a last chunk: that would end the body here
    assert not exchange.request_complete
    assert exchange.body_end() == LAST_CHUNK == b"0\r\n\r\n"
    assert exchange.request_complete


def test_a_sized_body_goes_as_it_is_and_is_complete_only_at_its_length() -> None:
    for sent, complete in ((b"x" * 10, True), (b"x" * 9, False), (b"x" * 11, False)):
        exchange = HttpExchange(body_length=10, streams_body=True)
        assert exchange.body_piece(sent[:4]) + exchange.body_piece(sent[4:]) == sent
        assert exchange.body_end() == b""
        assert exchange.request_complete is complete


@pytest.mark.parametrize("chunked", [False, True])
def test_an_answer_before_the_body_was_sent_leaves_the_connection_unfit(chunked: bool) -> None:
    exchange = HttpExchange(body_length=None if chunked else 4, chunked=chunked, streams_body=True)
    early = response(b"401 Unauthorized", b"Content-Length: 0")
    assert summary(exchange.feed(early)) == [head(401, (b"Content-Length", b"0")), END]
    assert verdict_of(exchange) == CLOSED  # the rest of the body is still to come
    exchange.body_piece(b"abcd")
    exchange.body_end()
    assert verdict_of(exchange) == REUSABLE  # ...unless it then finished


def test_a_request_without_a_streamed_body_is_complete_from_the_start() -> None:
    assert HttpExchange().request_complete
    assert HttpExchange(body_length=2).request_complete
    assert not HttpExchange(body_length=300_000, streams_body=True).request_complete


# -- verdicts that depend on how the bytes arrived (kept as they were) --------------------------


def test_stray_empty_lines_after_a_response_are_judged_by_how_they_arrive() -> None:
    """llhttp skips empty lines before a response; bytes after a complete response that
    arrive on their own are a violation. So the same bytes pass whole and fail cut. Kept as
    it was (this restructure changes no behaviour); the one split-dependent verdict besides
    the next test's, and left out of the property test below."""
    assert verdict_of(run([OK_HELLO + b"\r\n"])[0]) == REUSABLE
    assert verdict_of(run([OK_HELLO, b"\r\n"])[0]) == CLOSED


def test_chunk_framing_after_a_head_response_is_judged_by_how_it_arrives() -> None:
    """llhttp reads a HEAD response's Transfer-Encoding as the start of a chunked body (it is
    not told the request was a HEAD): an empty chunked body in the same read passes unseen
    (no body callback), in a later read it is a violation. Kept as it was, like the above."""
    chunked_head = response(b"200 OK", b"Transfer-Encoding: chunked")
    assert verdict_of(run([chunked_head + b"0\r\n\r\n"], head_request=True)[0]) == REUSABLE
    assert verdict_of(run([chunked_head, b"0\r\n\r\n"], head_request=True)[0]) == CLOSED


# -- any cut of the same bytes gives the same events and the same verdict -----------------------

CHUNK_EXTENSIONS = st.sampled_from([b"", b";a=1", b';name="v"', b";x"])
TOKENS = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12).map(str.encode)


@st.composite
def exchanges(draw: st.DrawFn) -> tuple[bytes, bool, bool, bool]:
    """A response — any framing, interim responses first, extra headers, sometimes a tail
    the framing does not account for — with whether it answers a HEAD, and whether (and
    how) the connection then closes."""
    head_request = draw(st.booleans())
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    status = draw(st.sampled_from([200, 201, 204, 304, 404, 500, 503]))
    headers = [b"%b: %b" % (draw(TOKENS), draw(TOKENS)) for _ in range(draw(st.integers(0, 3)))]
    headers += draw(
        st.lists(st.sampled_from([b"Connection: close", b"Connection: keep-alive"]), max_size=1)
    )
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["length", "chunked", "none"]))
    if framing == "chunked" and head_request:
        framing = "length"  # chunk framing after a HEAD answer: see the test above
    sent = b""
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(body))
        sent = body
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        rest = body
        while rest:
            size = draw(st.integers(1, len(rest)))
            sent += b"%x%b\r\n%b\r\n" % (size, draw(CHUNK_EXTENSIONS), rest[:size])
            rest = rest[size:]
        trailers = draw(st.lists(TOKENS, max_size=2))
        sent += b"0\r\n" + b"".join(b"X-%b: t\r\n" % t for t in trailers) + b"\r\n"
    else:
        sent = body
    if head_request or status in (204, 304):
        sent = b""
    interim = draw(st.lists(st.sampled_from([b"100 Continue", b"103 Early Hints"]), max_size=2))
    data = b"".join(response(s) for s in interim)
    data += response(b"%d Status" % status, *headers, body=sent, version=version)
    tail = draw(
        st.sampled_from([b"", b"", SMUGGLED, b"XYZ", b"\r\nHTTP/1.1 200 OK\r\n\r\n"])
        | st.binary(min_size=1, max_size=8).filter(lambda b: b.strip(b"\r\n") != b"")
    )  # empty lines alone: see test_stray_empty_lines_after_a_response_...
    eof = draw(st.booleans())
    return data + tail, head_request, eof, draw(st.booleans())


@settings(max_examples=300, deadline=None)
@given(exchanges(), st.lists(st.integers(0, 10_000), max_size=12))
def test_any_cut_of_the_same_bytes_gives_the_same_events_and_verdict(
    drawn: tuple[bytes, bool, bool, bool], offsets: list[int]
) -> None:
    data, head_request, eof, reset = drawn
    bounds = sorted({0, len(data), *(o % (len(data) + 1) for o in offsets)})
    pieces = [data[a:b] for a, b in pairwise(bounds)]
    whole, whole_events = run([data], head_request, eof, reset)
    cut, cut_events = run(pieces, head_request, eof, reset)
    assert summary(cut_events) == summary(whole_events)
    assert verdict_of(cut) == verdict_of(whole)
