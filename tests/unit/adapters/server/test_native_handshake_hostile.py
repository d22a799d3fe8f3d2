"""The native engine's opening handshake under attack, by property (hypothesis): an upgrade
request, valid or hostile (oversized lines, headers and request lines; a key twice or
malformed; no Upgrade; a bad version; folded headers; NUL bytes; non-ASCII bytes; a body; a
bare LF; ...), with the client's frames behind it in the same bytes, fed to the gateway's
HTTP protocol as uvicorn does on a new socket (``GuardedHttpProtocol``, which hands the
upgrade to ``NativeWebSocketProtocol``), cut at random points, the app let run a random
number of loop steps between reads, and the socket lost (``connection_lost``) at a random
point or not at all. Whatever the bytes and the cuts:

- exactly one answer is written: a 101 whose ``Sec-WebSocket-Accept`` answers the key sent,
  or a 4xx refusal, the connection then ended — and nothing after a refusal (no answer to
  the frames behind it, no message to the app);
- the frames behind the request are answered only after the 101, each of them, in order;
- the answer does not depend on where the bytes were cut or when the app ran (cut off by a
  lost socket: a beginning of it), and is the uvicorn engine's, word for word (websockets'
  ``ServerProtocol`` judging the head uvicorn hands over: the reference the native
  handshake module names);
- websockets' ``ServerProtocol`` given the raw request refuses nothing the gateway accepts
  (but HTTP/1.0, which uvicorn hands over as HTTP/1.1), and what it accepts the gateway
  refuses only by its own HTTP limits (400, 414, 431 before any upgrade);
- a lost socket, at any point, ends every task of the connection and the server's count of
  it, writes nothing more, and logs no error.

The native fast path once accepted what websockets refuses (two Origin headers, a
subprotocol that is not a token, a request line past websockets' limit once uvicorn rebuilt
it): found by this test, fixed in ``handshake.read_request``, kept among the variants. A
request that is no upgrade as uvicorn sees it (no Upgrade, a spoilt Connection) is plain
HTTP, the app's: the stand-in app answers it 404, and it is sent without frames behind it
(they would be a second, garbled request).

The fakes are those of tests/unit/adapters/server/fakes.py (the transport, the echoing
app, the gateway's uvicorn config); each example runs on an event loop of its own. By
default the examples are few enough for the unit suite and always the same (derandomized).
To fuzz for real:

    HANDSHAKE_FUZZ_EXAMPLES=2000 HANDSHAKE_FUZZ_RANDOM=1 .venv/bin/python -m pytest \\
        tests/unit/adapters/server/test_native_handshake_hostile.py -q \\
        --hypothesis-show-statistics
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import pairwise
from typing import Any, Final, NamedTuple

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from kalami_gateway.adapters.asgi import Receive, Scope, Send
from kalami_gateway.adapters.server.handshake_lines import allow_long_handshake_lines
from kalami_gateway.adapters.server.native.handshake import accept_key
from tests.unit.adapters.server.client_frames import frame
from tests.unit.adapters.server.fakes import (  # noqa: F401  # the fixture, by name
    EchoApp,
    FakeTransport,
    gateway_config,
    keep_uvicorns_loggers,
)

# -- The requests ----------------------------------------------------------------------------


@dataclasses.dataclass
class Head:
    """An upgrade request in parts, for the mutations to spoil."""

    key: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    method: bytes = b"GET"
    version: bytes = b"HTTP/1.1"
    body: bytes = b""
    eol: bytes = b"\r\n"

    def without(self, name: bytes) -> None:
        self.headers = [(n, v) for n, v in self.headers if n.lower() != name.lower()]

    def replace(self, name: bytes, value: bytes) -> None:
        self.without(name)
        self.headers.append((name, value))

    def render(self) -> bytes:
        eol = self.eol
        lines = [self.method + b" " + self.target + b" " + self.version]
        lines += [name + b": " + value for name, value in self.headers]
        return eol.join(lines) + eol + eol + self.body


Mutation = Callable[[st.DrawFn, Head], None]
KEY_16: Final = st.binary(min_size=16, max_size=16).map(base64.b64encode)


def _long_target(low: int, high: int) -> Mutation:
    """The request target padded to ``low``-``high`` bytes."""

    def mutate(draw: st.DrawFn, head: Head) -> None:
        size = draw(st.integers(low, high))
        head.target += b"&pad=" + b"a" * max(0, size - len(head.target) - 5)

    return mutate


def _add(name: bytes, value: bytes | st.SearchStrategy[bytes]) -> Mutation:
    def mutate(draw: st.DrawFn, head: Head) -> None:
        head.headers.append((name, value if isinstance(value, bytes) else draw(value)))

    return mutate


def _replace(name: bytes, value: bytes | st.SearchStrategy[bytes]) -> Mutation:
    def mutate(draw: st.DrawFn, head: Head) -> None:
        head.replace(name, value if isinstance(value, bytes) else draw(value))

    return mutate


def _drop(name: bytes) -> Mutation:
    def mutate(draw: st.DrawFn, head: Head) -> None:
        head.without(name)

    return mutate


def _set(**parts: bytes) -> Mutation:
    def mutate(draw: st.DrawFn, head: Head) -> None:
        for part, value in parts.items():
            setattr(head, part, value)

    return mutate


def _in_a_header(spoil: st.SearchStrategy[bytes], where: str) -> Mutation:
    """``spoil`` put into one header's name or value, at a random place."""

    def mutate(draw: st.DrawFn, head: Head) -> None:
        index = draw(st.integers(0, len(head.headers) - 1))
        name, value = head.headers[index]
        text = name if where == "name" else value
        at = draw(st.integers(1 if where == "name" else 0, len(text)))
        text = text[:at] + draw(spoil) + text[at:]
        head.headers[index] = (text, value) if where == "name" else (name, text)

    return mutate


def _in_the_target(spoil: bytes) -> Mutation:
    def mutate(draw: st.DrawFn, head: Head) -> None:
        at = draw(st.integers(1, len(head.target)))
        head.target = head.target[:at] + spoil + head.target[at:]

    return mutate


def _folded(draw: st.DrawFn, head: Head) -> None:
    """One header's value continued on the next line (obs-fold, RFC 9112 §5.2)."""
    index = draw(st.integers(0, len(head.headers) - 1))
    name, value = head.headers[index]
    at = draw(st.integers(0, len(value)))
    head.headers[index] = (
        name,
        value[:at] + b"\r\n" + draw(st.sampled_from([b" ", b"\t"])) + value[at:],
    )


def _a_second_key(draw: st.DrawFn, head: Head) -> None:
    head.headers.append((b"Sec-WebSocket-Key", draw(st.just(head.key) | KEY_16)))


def _a_body(framing: tuple[bytes, bytes], body: bytes) -> Mutation:
    def mutate(draw: st.DrawFn, head: Head) -> None:
        head.headers.append(framing)
        head.body = body

    return mutate


def _padded_headers(count: int, size: int) -> Mutation:
    def mutate(draw: st.DrawFn, head: Head) -> None:
        head.headers.extend((b"X-Pad-%d" % n, b"a" * size) for n in range(count))

    return mutate


MUTATIONS: Final[dict[str, Mutation]] = {
    # Past the HTTP protocol's limits (431, 414: adapters/server/http_protocol.py).
    "a header line past 16 KiB": _add(b"X-Big", st.integers(16_400, 17_000).map(b"a".__mul__)),
    "headers past 32 KiB in all": _padded_headers(5, 7000),
    "more than 100 headers": _padded_headers(100, 1),
    "a request line past 16 KiB": _long_target(16_400, 17_000),
    # Within them, past websockets' own 8 KiB default (raised to 16 KiB at start-up).
    "a long header line": _add(b"X-Long", st.integers(8_200, 16_300).map(b"a".__mul__)),
    "a long request line": _long_target(8_200, 16_300),
    # Within the HTTP protocol's 16 KiB, past websockets' line limit once rebuilt by uvicorn.
    "a request line websockets finds too long": _long_target(16_372, 16_384),
    # The key, the upgrade, the version.
    "two keys": _a_second_key,
    "no key": _drop(b"Sec-WebSocket-Key"),
    "a key of 8 bytes": _replace(b"Sec-WebSocket-Key", base64.b64encode(b"8 bytes!")),
    "a key not in base64": _replace(
        b"Sec-WebSocket-Key",
        st.sampled_from([b"not base64 at all!!!!!!=", b"-_" * 11 + b"==", b""]),
    ),
    "no Upgrade": _drop(b"Upgrade"),
    "another Upgrade": _replace(
        b"Upgrade", st.sampled_from([b"h2c", b"websocket, h2c", b"TLS/1.0"])
    ),
    "Upgrade twice": _add(b"Upgrade", b"websocket"),
    "no Connection": _drop(b"Connection"),
    "Connection: close": _replace(b"Connection", b"close"),
    "a bad version": _replace(
        b"Sec-WebSocket-Version", st.sampled_from([b"8", b"12", b"14", b"013", b"13, 8", b""])
    ),
    "no version": _drop(b"Sec-WebSocket-Version"),
    "the version twice": _add(b"Sec-WebSocket-Version", st.sampled_from([b"13", b"8"])),
    # Bytes HTTP forbids, or allows only as obs-text.
    "a folded header": _folded,
    "NUL in a value": _in_a_header(st.just(b"\x00"), "value"),
    "NUL in a name": _in_a_header(st.just(b"\x00"), "name"),
    "NUL in the target": _in_the_target(b"\x00"),
    "a control byte in a value": _in_a_header(
        st.sampled_from([b"\x01", b"\x0b", b"\x7f"]), "value"
    ),
    "UTF-8 in a value": _in_a_header(st.just("é€".encode()), "value"),
    "Latin-1 in a value": _in_a_header(st.just(b"\xe9\xff"), "value"),
    "non-ASCII in a name": _in_a_header(st.just("é".encode()), "name"),
    "non-ASCII in the target": _in_the_target("é".encode()),
    "a space before a colon": _in_a_header(st.just(b" "), "name"),
    # The request line and framing.
    "HTTP/1.0": _set(version=b"HTTP/1.0"),
    "POST": _set(method=b"POST"),
    "a body": _a_body((b"Content-Length", b"5"), b"hello"),
    "a chunked body": _a_body((b"Transfer-Encoding", b"chunked"), b"5\r\nhello\r\n0\r\n\r\n"),
    "bare LF line ends": _set(eol=b"\n"),
    # What websockets checks and the native fast path once did not.
    "two Origin headers": _add(b"Origin", b"https://evil.example"),
    "a subprotocol that is not a token": _add(
        b"Sec-WebSocket-Protocol", st.sampled_from([b"kalami.v1 bearer.x", b"a;b", b"(x)"])
    ),
}
# uvicorn hands an HTTP/1.0 upgrade over as HTTP/1.1 (both engines accept it; websockets
# given the raw request answers 505).
REBUILT_BY_UVICORN: Final = frozenset({"HTTP/1.0"})


class Attack(NamedTuple):
    """A request and the frames sent behind it without waiting for the 101."""

    head: bytes
    key: bytes  # the Sec-WebSocket-Key a 101 must answer
    mutations: tuple[str, ...]
    behind: bytes
    pings: tuple[bytes, ...]  # the payloads of the pings behind, in order
    messages: tuple[tuple[Opcode, bytes], ...]  # the messages behind, in order


def _case(draw: st.DrawFn, name: bytes) -> bytes:
    return draw(st.sampled_from([name, name.lower(), name.upper()]))


@st.composite
def attacks(draw: st.DrawFn, mutation: str | None = None) -> Attack:
    """A request, spoilt by ``mutation`` or else by none, one or two drawn (a third of them
    none: a valid request), and up to three frames behind it."""
    key = draw(KEY_16)
    token = draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", max_size=40)).encode()
    headers = [
        (_case(draw, b"Host"), b"gateway.test"),
        (_case(draw, b"Upgrade"), draw(st.sampled_from([b"websocket", b"WebSocket"]))),
        (
            _case(draw, b"Connection"),
            draw(st.sampled_from([b"Upgrade", b"keep-alive, Upgrade", b"Upgrade, HTTP2-Settings"])),
        ),
        (_case(draw, b"Sec-WebSocket-Key"), key),
        (_case(draw, b"Sec-WebSocket-Version"), b"13"),
    ]
    if draw(st.booleans()):
        headers.append((_case(draw, b"Origin"), b"https://app.example"))
    if draw(st.booleans()):
        offered = draw(st.sampled_from([b"kalami.v1", b"kalami.v1, bearer.t0k", b" kalami.v1 ,x"]))
        headers.append((_case(draw, b"Sec-WebSocket-Protocol"), offered))
    head = Head(key, b"/ws?token=" + token, draw(st.permutations(headers)))
    if mutation is not None:
        mutations: tuple[str, ...] = (mutation,)
    else:
        names = st.sampled_from(sorted(MUTATIONS))
        first, second = draw(st.none() | names), draw(st.none() | st.none() | names)
        mutations = tuple(dict.fromkeys(name for name in (first, second) if name is not None))
    for name in mutations:
        MUTATIONS[name](draw, head)
    pings: list[bytes] = []
    messages: list[tuple[Opcode, bytes]] = []
    frames: list[bytes] = []
    for kind in draw(st.lists(st.sampled_from(["ping", "text", "binary"]), max_size=3)):
        if kind == "ping":
            payload = draw(st.binary(max_size=8))
            pings.append(payload)
            frames.append(frame(0x9, payload))
        elif kind == "text":
            payload = draw(st.text(max_size=12)).encode()
            messages.append((Opcode.TEXT, payload))
            frames.append(frame(0x1, payload))
        else:
            payload = draw(st.binary(max_size=12))
            messages.append((Opcode.BINARY, payload))
            frames.append(frame(0x2, payload))
    return Attack(head.render(), key, mutations, b"".join(frames), tuple(pings), tuple(messages))


# Where the bytes are cut: anywhere, or after every byte of the first 600.
CUTS: Final = st.lists(st.integers(0, 1 << 16), max_size=12) | st.just([-1])
# How many loop steps the app gets after each read (cycled over the reads).
STEPS: Final = st.lists(st.sampled_from([0, 0, 1, 2, 5, 30]), min_size=1, max_size=8)


class Loss(NamedTuple):
    """When the socket is lost, and how (``connection_lost``: a reset, or a clean close)."""

    # None: once everything was read and answered (the client leaves). Else the moment, modulo
    # the 2n + 1 there are in n reads: 2k before read k, 2k + 1 right after it (before the app
    # has run); -1 right after the last read.
    at: int | None
    reset: bool


LOSSES: Final = st.builds(Loss, st.none() | st.just(-1) | st.integers(0, 1 << 16), st.booleans())


def pieces_of(data: bytes, offsets: list[int]) -> list[bytes]:
    if offsets == [-1]:
        bounds = [*range(min(len(data), 600)), len(data)]
    else:
        bounds = sorted({0, len(data), *(o % (len(data) + 1) for o in offsets)})
    return [data[a:b] for a, b in pairwise(bounds) if b > a]


# -- One connection --------------------------------------------------------------------------


class SocketTransport(FakeTransport):
    """The fake transport, with what asyncio's socket transport enforces: no write after
    ``write_eof``."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        super().write(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)


class HandshakeApp(EchoApp):
    """The echoing app as the /ws handler meets a handshake (adapters/http/websocket.py): a
    plain HTTP request is not a WebSocket (404, connection closed); an accept the server
    dropped (the client left while the app decided) ends the app quietly."""

    plain = False  # it was asked a plain HTTP request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.plain = True
            body = b"not a websocket"
            headers = [
                (b"content-type", b"text/plain"),
                (b"content-length", b"%d" % len(body)),
                (b"connection", b"close"),
            ]
            await send({"type": "http.response.start", "status": 404, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        try:
            await super().__call__(scope, receive, send)
        except ConnectionResetError:
            return


class Outcome(NamedTuple):
    """What the client read: the answer (None: nothing yet), the 101's accept, a refusal's
    body, then the pongs and the app's echoes, each in order."""

    status: int | None
    accept: str | None
    body: bytes
    pongs: tuple[bytes, ...]
    echoes: tuple[tuple[Opcode, bytes], ...]


def read_outcome(out: bytes) -> Outcome:
    """``out`` as the client reads it, asserting it is one answer: a 101 and frames, or a
    4xx refusal and nothing after it."""
    if not out:
        return Outcome(None, None, b"", (), ())
    head, blank, rest = out.partition(b"\r\n\r\n")
    assert blank, f"an answer cut short: {out[:120]!r}"
    status_line, *lines = head.split(b"\r\n")
    version, code, _ = status_line.split(b" ", 2)
    assert version == b"HTTP/1.1", status_line
    headers: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    status = int(code)
    if status != 101:
        assert 400 <= status < 500, f"neither a 101 nor a 4xx refusal: {status_line!r}"
        (length,) = headers[b"content-length"]
        body, after = rest[: int(length)], rest[int(length) :]
        assert after == b"", f"written after the refusal: {after[:120]!r}"
        return Outcome(status, None, body, (), ())
    (accept,) = headers[b"sec-websocket-accept"]
    client = ClientProtocol(parse_uri("ws://gateway.test/ws"), state=State.OPEN)
    client.receive_data(rest)
    assert client.parser_exc is None, f"not frames after the 101: {rest[:120]!r}"
    pongs: list[bytes] = []
    echoes: list[tuple[Opcode, bytes]] = []
    for item in client.events_received():
        assert isinstance(item, Frame)
        if item.opcode is Opcode.PONG:
            pongs.append(bytes(item.data))
        else:
            assert item.opcode in (Opcode.TEXT, Opcode.BINARY), f"a {item.opcode.name} frame"
            echoes.append((item.opcode, bytes(item.data)))
    return Outcome(101, accept.decode(), b"", tuple(pongs), tuple(echoes))


class Trace(NamedTuple):
    out: bytes  # what was written before the socket was lost
    aborted: bool  # lost before everything was read and answered
    ending: bool  # the transport was closing, or its write side shut, by then
    app: HandshakeApp

    @property
    def outcome(self) -> Outcome:
        return read_outcome(self.out)


@contextmanager
def errors_logged() -> Iterator[list[logging.LogRecord]]:
    """Every record at ERROR or above, from any logger (ones a logging set-up of another test
    disabled or stopped propagating included)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if all(record is not kept for kept in records):
                records.append(record)

    handler = Keep(logging.ERROR)
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error", "asyncio")]
    saved = [(lg.disabled, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.disabled = False
        lg.addHandler(handler)
    try:
        yield records
    finally:
        for lg, (disabled, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.disabled, lg.propagate = disabled, propagate


async def steps(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def connect(
    engine: str,
    pieces: list[bytes],
    app_steps: list[int],
    loss: Loss,
) -> Trace:
    """One client: ``pieces`` read in turn while the transport reads (paused: the rest waits
    in the kernel, the app runs meanwhile), the app let run ``app_steps`` loop steps after
    each read; the socket lost at ``loss``. Then the connection's end is checked: no task
    left, nothing in the server's state, nothing written after the loss."""
    app = HandshakeApp()
    config = gateway_config(app, ws_engine=engine)
    state = ServerState()
    loop = asyncio.get_running_loop()
    http = config.http_protocol_class(  # type: ignore[call-arg]
        config=config, server_state=state, app_state={}, _loop=loop
    )
    transport = SocketTransport()
    transport.set_protocol(http)
    http.connection_made(transport)
    moments = 2 * len(pieces) + 1
    stop = None if loss.at is None else (loss.at % moments if loss.at >= 0 else moments - 2)
    moment = 0
    while moment // 2 < len(pieces) and moment != stop and not transport.closing:
        read = moment // 2
        if moment % 2 == 0:
            if transport.reading_paused:
                await steps(30)
                if transport.reading_paused:
                    break  # nothing more is read: the rest stays in the kernel
                continue
            reader = transport.get_protocol()  # the HTTP protocol, then the WebSocket one
            assert isinstance(reader, asyncio.Protocol)
            reader.data_received(pieces[read])
        else:
            await steps(app_steps[read % len(app_steps)])
        moment += 1
    aborted = moment == stop
    if not aborted:
        await steps(100)  # everything read is answered
    out = bytes(transport.out)
    ending = transport.closing or transport.eof_written
    protocol = transport.get_protocol()
    assert isinstance(protocol, asyncio.Protocol)
    protocol.connection_lost(ConnectionResetError("reset by peer") if loss.reset else None)
    await steps(100)
    assert transport.out == out, "written after the socket was lost"
    assert not state.tasks, "the app still runs"
    assert not state.connections, "the server still counts the connection"
    left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    assert not left, f"tasks left running: {left}"
    return Trace(out, aborted, ending, app)


def run(engine: str, pieces: list[bytes], app_steps: list[int], loss: Loss) -> Trace:
    """``connect`` on an event loop of its own, whose unhandled errors and every log record
    at ERROR fail the example."""
    loop = asyncio.new_event_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    try:
        with errors_logged() as records:
            trace = loop.run_until_complete(connect(engine, pieces, app_steps, loss))
    finally:
        loop.close()
    assert not unhandled, f"unhandled in the loop: {unhandled}"
    assert not records, "logged: " + "; ".join(r.getMessage() for r in records)
    return trace


def websockets_verdict(head: bytes) -> int:
    """What websockets' ``ServerProtocol`` answers the raw request: 101, or the status of
    its refusal (400 for one it cannot parse and queues no answer to, as uvicorn answers)."""
    conn = ServerProtocol()
    conn.receive_data(head)
    requests = [item for item in conn.events_received() if isinstance(item, Request)]
    if not requests:
        output = b"".join(conn.data_to_send())
        return int(output.split(b" ", 2)[1]) if output else 400
    return conn.accept(requests[0]).status_code


# -- The property ----------------------------------------------------------------------------

# uvicorn's own answer to a request httptools cannot parse (HttpToolsProtocol.send_400_response).
UNPARSEABLE: Final = b"Invalid HTTP request received."


def check(attack: Attack, offsets: list[int], app_steps: list[int], loss: Loss) -> None:
    """The properties (the module's docstring), for one attack cut at ``offsets``."""
    allow_long_handshake_lines()  # as create_app does at start-up
    data = attack.head + attack.behind
    first = run("native", [data], [0], Loss(None, reset=False))
    if first.app.plain and attack.behind:
        # Not an upgrade as uvicorn sees it (a spoilt Upgrade or Connection, say): plain HTTP,
        # the app's, and frames behind it a second, garbled request. Sent alone.
        attack = attack._replace(behind=b"", pings=(), messages=())
        data = attack.head
        first = run("native", [data], [0], Loss(None, reset=False))
    whole = first.outcome
    pieces = pieces_of(data, offsets)
    trace = run("native", pieces, app_steps, loss)
    outcome = trace.outcome
    for name in attack.mutations or ("valid",):
        event(f"mutation: {name}")
    event(f"answer: {whole.status}" + (" (plain HTTP)" if first.app.plain else ""))
    if trace.aborted:
        event("lost: after the answer" if outcome.status else "lost: before it")

    # One answer: a 101 for this key, or a 4xx refusal (read_outcome checks the rest).
    assert whole.status is not None, "no answer"
    if whole.status == 101:
        assert whole.accept == accept_key(attack.key)
        # Every frame sent behind the request answered after the 101, in order.
        assert whole.pongs == attack.pings
        assert whole.echoes == attack.messages
    else:
        assert first.ending, "a refusal that leaves the connection open"
        assert not any(m["type"] == "websocket.receive" for m in first.app.received)

    # However the bytes were cut and whenever the app ran: the same; cut off, a beginning of it.
    if not trace.aborted:
        assert outcome == whole
    elif outcome.status is not None:
        assert outcome._replace(pongs=(), echoes=()) == whole._replace(pongs=(), echoes=())
        assert outcome.pongs == whole.pongs[: len(outcome.pongs)]
        assert outcome.echoes == whole.echoes[: len(outcome.echoes)]

    # The uvicorn engine (websockets' ServerProtocol on the head uvicorn hands over) answers
    # alike, word for word.
    assert run("uvicorn", [data], [0], Loss(None, reset=False)).outcome == whole
    # websockets on the raw request: the gateway accepts nothing it refuses; what it accepts,
    # the gateway refuses only by the HTTP protocol's own limits.
    verdict = websockets_verdict(attack.head)
    event(f"websockets: {verdict}")
    if whole.status == 101 and not REBUILT_BY_UVICORN.intersection(attack.mutations):
        assert verdict == 101, f"websockets answers {verdict}"
    if verdict == 101 and whole.status != 101:
        assert whole.status in (414, 431) or (whole.status, whole.body) == (400, UNPARSEABLE)


@settings(
    max_examples=int(os.environ.get("HANDSHAKE_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("HANDSHAKE_FUZZ_RANDOM") is None,
)
@given(attacks(), CUTS, STEPS, LOSSES)
def test_a_handshake_is_answered_once_and_alike_however_it_is_cut_or_cut_off(
    attack: Attack, offsets: list[int], app_steps: list[int], loss: Loss
) -> None:
    check(attack, offsets, app_steps, loss)


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@settings(
    max_examples=int(os.environ.get("HANDSHAKE_FUZZ_EACH", "3")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("HANDSHAKE_FUZZ_RANDOM") is None,
)
@given(st.data(), CUTS, STEPS, LOSSES)
def test_every_hostile_variant_is_answered_once_and_alike(
    mutation: str, data: st.DataObject, offsets: list[int], app_steps: list[int], loss: Loss
) -> None:
    """Each mutation on its own, in every run of the suite (the random property above may
    draw few of some in its default number of examples)."""
    check(data.draw(attacks(mutation)), offsets, app_steps, loss)
