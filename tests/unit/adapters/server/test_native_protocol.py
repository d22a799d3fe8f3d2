"""The native WebSocket protocol (WS_ENGINE=native) on a fake transport, behind the gateway's
own HTTP protocol as uvicorn runs it: the handshake, the scope, messages both ways, pings,
the close handshake both ways, failures, the frame budget, shutdown, the end of a socket.
A websockets ``ClientProtocol`` is the peer; the uvicorn engine is the reference where the
two must answer alike. No socket, no sleep."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, cast

import pytest
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.typing import BytesLike, Subprotocol
from websockets.uri import parse_uri

from kalami_gateway.adapters.asgi import SOCKET_CONTROL, Receive, Scope, Send
from kalami_gateway.adapters.server.close_budget import CLOSE_TIMEOUT, LINGER_SECONDS
from kalami_gateway.adapters.server.http_protocol import GuardedHttpProtocol
from kalami_gateway.adapters.server.native.protocol import (
    NativeWebSocketProtocol,
    native_websocket_protocol,
)
from kalami_gateway.adapters.server.ws_protocol import LivelyWebSocketProtocol
from kalami_gateway.app.factory import GatewayApp
from kalami_gateway.app.server import uvicorn_config
from kalami_gateway.app.settings import Settings, SettingsError
from tests.unit.adapters.server.fakes import (  # noqa: F401  # the fixture, by name
    JWT_SECRET,
    AppOnly,
    EchoApp,
    FakeTransport,
    gateway_config,
    keep_uvicorns_loggers,
    settle,
)


@dataclasses.dataclass
class Connection:
    """One connection through the HTTP protocol into the WebSocket protocol uvicorn runs."""

    transport: FakeTransport
    client: ClientProtocol
    state: ServerState
    app: EchoApp

    @property
    def ws(self) -> Any:
        return self.transport.protocol

    def send(self, *frames: Frame) -> None:
        """Frames from the client, as one read."""
        for frame in frames:
            self.client.send_frame(frame)
        self.ws.data_received(b"".join(self.client.data_to_send()))

    def received(self) -> list[object]:
        """What the client has been sent since last asked (the 101 is read first)."""
        self.client.receive_data(self.transport.take())
        events: list[object] = list(self.client.events_received())
        self.client.data_to_send()  # the client's own answers are not sent on
        return events

    async def finish(self) -> None:
        await asyncio.gather(*list(self.state.tasks), return_exceptions=True)
        await settle()

    async def end(self) -> None:
        """The socket lost without an error, then the app's end awaited."""
        self.ws.connection_lost(None)
        await self.finish()


def open_connection(
    app: EchoApp | None = None,
    *,
    engine: str = "native",
    path: str = "/ws?token=abc",
    behind: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    subprotocols: list[str] | None = None,
    **settings: Any,
) -> Connection:
    """A client's handshake fed to the gateway's HTTP protocol (``behind``: bytes in the
    same read after it), as uvicorn would on a new socket."""
    app = app or EchoApp()
    config = gateway_config(app, ws_engine=engine, **settings)
    state = ServerState()
    http = config.http_protocol_class(  # type: ignore[call-arg]
        config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop()
    )
    assert isinstance(http, GuardedHttpProtocol)
    transport = FakeTransport()
    transport.set_protocol(http)
    http.connection_made(transport)
    client = ClientProtocol(
        parse_uri(f"ws://gateway.test{path}"),
        subprotocols=[Subprotocol(s) for s in subprotocols or []] or None,
    )
    handshake = client.connect()
    for name, value in headers or []:
        handshake.headers[name] = value
    client.send_request(handshake)
    head = b"".join(client.data_to_send())
    http.data_received(head + behind)
    return Connection(transport, client, state, app)


async def accepted_connection(app: EchoApp | None = None, **options: Any) -> Connection:
    """``open_connection`` (``options`` are its own), the app let accept, the 101 read."""
    conn = open_connection(app, **options)
    await settle()
    conn.received()
    return conn


def status_of(transport: FakeTransport) -> tuple[bytes, bytes]:
    """The status line and the body of an HTTP answer written to ``transport``."""
    out = transport.take()
    head, _, body = out.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0], body


def data_of(events: list[object]) -> list[BytesLike]:
    """The payloads of the frames the client received."""
    return [cast(Frame, event).data for event in events]


def close_of(event: object) -> Close:
    """The code and reason of a close frame the client received."""
    return Close.parse(cast(Frame, event).data)


# -- The handshake ---------------------------------------------------------------------------


async def test_the_101_is_one_the_client_accepts_and_the_scope_is_uvicorns() -> None:
    scopes = {}
    for engine in ("uvicorn", "native"):
        conn = await accepted_connection(
            engine=engine,
            path="/ws/%61b?token=x%20y&resume=r",
            headers=[("Sec-WebSocket-Protocol", "kalami.v1, bearer.tok"), ("X-Device", "é")],
        )
        assert conn.client.handshake_exc is None
        scope = conn.app.scope
        scopes[engine] = scope
        await conn.end()
    native, uvicorns = scopes["native"], scopes["uvicorn"]
    assert set(native["extensions"]) == set(uvicorns["extensions"])
    for scope in (native, uvicorns):
        scope.pop("extensions")
        scope.pop("state")
        # Each client made a key of its own.
        scope["headers"] = [h for h in scope["headers"] if h[0] != b"sec-websocket-key"]
    assert native == uvicorns
    assert native["path"] == "/ws/ab"
    assert native["raw_path"] == b"/ws/%61b"
    assert native["query_string"] == b"token=x%20y&resume=r"
    assert native["subprotocols"] == ["kalami.v1", "bearer.tok"]


async def test_the_101_carries_the_chosen_subprotocol() -> None:
    conn = open_connection(EchoApp(subprotocol="kalami.v1"), subprotocols=["kalami.v1"])
    await settle()
    head = conn.transport.out.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Protocol: kalami.v1" in head
    conn.received()
    assert conn.client.handshake_exc is None
    await conn.end()


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Sec-WebSocket-Version", "8"),
        ("Sec-WebSocket-Key", "not base64!"),
        ("Sec-WebSocket-Key", "c2hvcnQ="),
        ("Connection", "keep-alive, Upgrade, not a token"),
    ],
)
async def test_a_bad_handshake_is_refused_as_the_uvicorn_engine_refuses_it(
    header: str, value: str
) -> None:
    answers = []
    for engine in ("uvicorn", "native"):
        conn = open_connection(engine=engine, headers=[(header, value)])
        await settle()
        answers.append(status_of(conn.transport))
        assert conn.transport.closing
        assert not conn.state.tasks
    assert answers[0] == answers[1]
    assert answers[1][0].startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 426 "))


async def test_a_good_handshake_the_fast_path_does_not_read_is_accepted_by_websockets() -> None:
    conn = await accepted_connection(
        path="/ws?token=t", headers=[("Connection", "Upgrade, HTTP2-Settings")]
    )
    assert conn.client.handshake_exc is None
    assert conn.app.scope["query_string"] == b"token=t"
    assert (b"connection", b"Upgrade, HTTP2-Settings") in conn.app.scope["headers"]
    conn.send(Frame(Opcode.TEXT, b"through"))
    await settle()
    assert data_of(conn.received()) == [b"through"]
    await conn.end()


async def test_a_close_before_the_accept_is_a_403() -> None:
    conn = open_connection(EchoApp(refuse=True))
    await settle()
    status, body = status_of(conn.transport)
    assert status == b"HTTP/1.1 403 Forbidden"
    assert body == b""
    assert conn.transport.closing
    await conn.end()
    assert not conn.state.connections
    assert conn.app.received == []


class LateApp:
    """Accepts after its client has gone (its own handshake timeout)."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.transport: FakeTransport | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        control = scope["extensions"][SOCKET_CONTROL]
        await receive()
        assert self.transport is not None
        self.transport.close()
        await send({"type": "websocket.accept"})
        try:
            control.accepted()
        except BaseException as exc:  # what it raises is the point
            self.error = exc


async def test_an_accept_for_a_client_already_leaving_is_a_reset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = LateApp()
    conn = open_connection(cast(EchoApp, app))
    app.transport = conn.transport
    await conn.finish()
    assert isinstance(app.error, ConnectionResetError)
    # Nobody to answer: no 101, no 500 on the closing socket, and nothing logged as an error
    # (any client could make one a connection by leaving right after its handshake).
    assert conn.transport.out == b""
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    conn.ws.connection_lost(None)


# -- Messages, pings, closes -----------------------------------------------------------------


async def test_messages_reach_the_app_and_its_replies_the_client() -> None:
    conn = await accepted_connection()
    conn.send(Frame(Opcode.TEXT, "héllo".encode()))
    assert conn.transport.reading_paused  # until the app's next receive()
    await settle()
    assert not conn.transport.reading_paused
    conn.send(Frame(Opcode.BINARY, b"\x00" * 70_000))
    await settle()
    conn.send(Frame(Opcode.TEXT, b"frag", fin=False))
    conn.send(Frame(Opcode.CONT, b"mented"))
    await settle()
    assert data_of(conn.received()) == [
        "héllo".encode(),
        b"\x00" * 70_000,
        b"fragmented",
    ]
    assert conn.app.received[0] == {"type": "websocket.receive", "text": "héllo"}
    assert conn.app.received[1] == {"type": "websocket.receive", "bytes": b"\x00" * 70_000}
    await conn.end()


async def test_a_ping_is_answered_at_once() -> None:
    conn = await accepted_connection()
    conn.send(Frame(Opcode.PING, b"are you there"))
    (pong,) = conn.received()  # no task has run since
    assert cast(Frame, pong).opcode is Opcode.PONG
    assert cast(Frame, pong).data == b"are you there"
    await conn.end()


async def test_frames_behind_the_handshake_in_the_same_read_are_answered_after_the_101() -> None:
    early = b"".join(
        Frame(opcode, data).serialize(mask=True)
        for opcode, data in ((Opcode.PING, b"early"), (Opcode.TEXT, b"first"))
    )
    conn = open_connection(behind=early)
    assert conn.transport.out == b""  # nothing before the app accepts
    await settle()
    out = bytes(conn.transport.out)
    assert out.startswith(b"HTTP/1.1 101 ")
    events = conn.received()
    assert isinstance(events[0], Response)
    frames = [cast(Frame, e) for e in events[1:]]
    assert [(f.opcode, f.data) for f in frames] == [
        (Opcode.PONG, b"early"),
        (Opcode.TEXT, b"first"),
    ]
    assert conn.app.received[0] == {"type": "websocket.receive", "text": "first"}
    await conn.end()


async def test_the_peers_close_is_answered_and_the_app_told() -> None:
    conn = await accepted_connection()
    conn.send(Frame(Opcode.CLOSE, Close(1000, "bye").serialize()))
    (reply,) = conn.received()
    assert close_of(reply) == Close(1000, "bye")
    assert conn.transport.closing
    await settle()
    assert conn.app.received[-1] == {"type": "websocket.disconnect", "code": 1000, "reason": "bye"}
    await conn.end()


async def test_the_apps_close_waits_for_the_peers_reply_within_the_close_timeout() -> None:
    conn = await accepted_connection()
    assert conn.app.send is not None
    await conn.app.send({"type": "websocket.close", "code": 4001, "reason": "token"})
    (frame,) = conn.received()
    assert close_of(frame) == Close(4001, "token")
    ws = conn.ws
    timer = ws._close_timer
    assert timer is not None
    assert timer.when() - asyncio.get_running_loop().time() <= CLOSE_TIMEOUT
    assert not conn.transport.closing
    with pytest.raises(RuntimeError):
        await conn.app.send({"type": "websocket.send", "text": "late"})
    conn.send(Frame(Opcode.CLOSE, Close(4001, "token").serialize()))
    assert conn.transport.closing
    assert ws._close_timer is None
    await conn.end()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (Frame(Opcode.TEXT, b"x" * 2048).serialize(mask=True), 1009),
        (Frame(Opcode.TEXT, b"\xff").serialize(mask=True), 1007),
        (b"\xc1\x81\x00\x00\x00\x00x", 1002),  # RSV1: no extension was negotiated
    ],
)
async def test_a_broken_protocol_gets_its_close_and_a_lingering_one(
    frame: bytes, code: int
) -> None:
    conn = await accepted_connection(max_message_bytes=1024)
    conn.ws.data_received(frame)
    (reply,) = conn.received()
    assert close_of(reply).code == code
    assert conn.transport.eof_written
    assert not conn.transport.closing  # read and discarded a while first
    assert not conn.transport.reading_paused
    timer = conn.ws._close_timer
    assert timer is not None
    assert timer.when() - asyncio.get_running_loop().time() <= LINGER_SECONDS
    conn.ws.data_received(b"\x00" * 4096)  # discarded
    assert conn.received() == []
    await settle()
    assert conn.app.received[-1]["type"] == "websocket.disconnect"
    assert conn.app.received[-1]["code"] == code
    await conn.finish()
    assert not conn.transport.closing  # the app's end does not cut the linger short
    conn.ws.connection_lost(None)


@pytest.mark.parametrize(
    "frame",
    [
        Frame(Opcode.TEXT, b"x" * 2048).serialize(mask=True),
        b"\xc1\x81\x00\x00\x00\x00x",
        Frame(Opcode.CLOSE, b"\x13\x88").serialize(mask=True),  # code 5000
    ],
)
async def test_a_broken_frame_after_the_apps_close_gets_no_second_close(frame: bytes) -> None:
    # RFC 6455 5.5.1: one close frame each way. The uvicorn engine (websockets) sends none.
    conn = await accepted_connection(max_message_bytes=1024)
    assert conn.app.send is not None
    await conn.app.send({"type": "websocket.close", "code": 4002, "reason": "Invalid token"})
    (sent,) = conn.received()
    assert close_of(sent) == Close(4002, "Invalid token")
    conn.ws.data_received(frame)
    assert conn.transport.take() == b""
    assert conn.transport.eof_written  # the lingering close: read and discarded a while
    conn.ws.data_received(b"\x00" * 4096)
    assert conn.transport.take() == b""
    await conn.end()


async def test_an_unmasked_frame_fails_with_1002() -> None:
    conn = await accepted_connection()
    conn.ws.data_received(b"\x81\x02hi")
    (reply,) = conn.received()
    assert close_of(reply).code == 1002
    await conn.end()


async def test_the_servers_shutdown_closes_with_1012() -> None:
    conn = await accepted_connection()
    conn.ws.shutdown()
    (frame,) = conn.received()
    assert close_of(frame).code == 1012
    assert conn.transport.closing
    await settle()
    assert conn.app.received[-1] == {"type": "websocket.disconnect", "code": 1012}
    await conn.end()


async def test_a_lost_socket_ends_the_app_and_frees_the_connection() -> None:
    conn = open_connection()
    await settle()
    ws = conn.ws
    assert ws in conn.state.connections
    send = conn.app.send
    assert send is not None
    ws.connection_lost(ConnectionResetError())
    await conn.finish()
    assert conn.app.received[-1] == {"type": "websocket.disconnect", "code": 1005}
    with pytest.raises(ClientDisconnected) as raised:
        await send({"type": "websocket.send", "text": "gone"})
    assert isinstance(raised.value, OSError)
    assert ws not in conn.state.connections
    assert not conn.state.tasks
    assert ws.scope == {}  # the cycle through the scope's socket control is broken
    await ws.pause(10.0)  # returns at once: the socket has gone


# -- The gateway's budgets and liveness ------------------------------------------------------


async def test_frames_over_the_budget_wait_unparsed_with_reading_paused() -> None:
    conn = await accepted_connection(ws_frame_rate=2)  # a burst of 4 frames
    conn.send(*(Frame(Opcode.PING, b"%d" % n) for n in range(10)))
    assert data_of(conn.received()) == [b"0", b"1", b"2", b"3"]
    assert conn.transport.reading_paused
    assert conn.ws._throttle is not None
    await conn.end()


async def test_a_peer_that_pings_and_never_reads_is_let_go_as_a_slow_consumer() -> None:
    conn = await accepted_connection(ws_send_buffer_bytes=65536)
    conn.ws.pause_writing()
    conn.transport.write_buffer = 65537
    conn.send(Frame(Opcode.PING, b"x"))
    assert conn.transport.aborted
    assert conn.ws.slow
    await conn.end()


async def test_an_unanswered_ping_closes_with_1011_and_is_flagged() -> None:
    conn = await accepted_connection()
    ws = conn.ws
    ws._ping()  # the heartbeat's callback
    (ping,) = conn.received()
    assert cast(Frame, ping).opcode is Opcode.PING
    ws._pong_timed_out()  # the pong timer's
    (close,) = conn.received()
    assert close_of(close) == Close(1011, "keepalive ping timeout")
    assert ws.unanswered
    assert conn.transport.closing
    await conn.end()


async def test_a_ping_unanswered_while_the_gateway_is_not_reading_is_sent_again() -> None:
    conn = await accepted_connection()
    ws = conn.ws
    ws._ping()
    conn.received()
    ws._read_paused = True  # a message waits for the app
    ws._pong_timed_out()
    (again,) = conn.received()
    assert cast(Frame, again).opcode is Opcode.PING
    assert not ws.unanswered
    assert not conn.transport.closing
    ws._read_paused = False
    await conn.end()


async def test_any_frame_stands_for_the_pong() -> None:
    conn = await accepted_connection()
    ws = conn.ws
    ws._ping()
    conn.received()
    conn.send(Frame(Opcode.TEXT, b"busy"))
    assert ws._pong_timer is None
    assert ws._ping_timer is not None  # the next ping is due
    await conn.end()


# -- The class -------------------------------------------------------------------------------


def test_the_native_engine_refuses_permessage_deflate() -> None:
    settings = Settings(jwt_secret=JWT_SECRET, ws_engine="native", ws_per_message_deflate=True)
    with pytest.raises(SettingsError, match="WS_PER_MESSAGE_DEFLATE"):
        uvicorn_config(cast(GatewayApp, AppOnly(EchoApp())), settings)


def test_ws_engine_chooses_the_class_and_uvicorn_stays_the_default() -> None:
    assert Settings(jwt_secret=JWT_SECRET).ws_engine == "uvicorn"
    default = gateway_config(EchoApp(), ws_engine="uvicorn").ws_protocol_class
    assert isinstance(default, type)
    assert issubclass(default, LivelyWebSocketProtocol)
    native = gateway_config(EchoApp(), ws_engine="native", ws_frame_rate=7).ws_protocol_class
    assert isinstance(native, type)
    assert issubclass(native, NativeWebSocketProtocol)
    assert native.frame_rate == 7.0


async def test_a_connection_is_slotted() -> None:
    cls = native_websocket_protocol(0, 1 << 20)
    assert not hasattr(cls.__new__(cls), "__dict__")
    conn = open_connection()
    await settle()
    assert not hasattr(conn.ws, "__dict__")
    assert not hasattr(conn.ws._inbox, "__dict__")
    await conn.end()
