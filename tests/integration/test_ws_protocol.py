"""What an accepted connection keeps of its handshake (issue 15): nothing the server, the
parser or the app would read again — not the headers, not the token in the query — and its
frames still flow through the server's own receive/send; a closed one is freed by reference
counting alone. On the engine the suites run on (KALAMI_TEST_WS_ENGINE, ``ws_engines.py``):
each test looks where that engine would keep a connection."""

from __future__ import annotations

import gc
import struct

import pytest
from websockets.asyncio.client import connect
from websockets.protocol import Protocol as SansioProtocol

from kalami_gateway.adapters.server.http_protocol import GuardedHttpProtocol
from tests.integration.backend_server import BackendServer
from tests.integration.conftest import (
    WS_ENGINE,
    closed_with,
    eventually,
    make_settings,
    recv_json,
    running_gateway,
    token_for,
)
from tests.integration.raw_websocket import (
    BINARY,
    CLOSE,
    TEXT,
    frame,
    handshake,
    raw_socket,
    read_until,
)
from tests.integration.ws_engines import (
    assert_nothing_of_the_handshake_kept,
    server_side_connections,
    websocket_protocols_alive,
)


def sansio_protocols_alive() -> int:
    return sum(1 for o in gc.get_objects() if issubclass(type(o), SansioProtocol))


def protocols_alive() -> tuple[int, int]:
    """WebSocket (either engine's) and HTTP protocol objects still tracked, unreachable ones
    included (with the collector off, cyclic garbage stays visible here). type() rather than
    isinstance(): a dead weak proxy among the objects raises on isinstance."""
    http = sum(1 for o in gc.get_objects() if issubclass(type(o), GuardedHttpProtocol))
    return websocket_protocols_alive(), http


async def test_an_accepted_connection_keeps_nothing_of_its_handshake(
    backend: BackendServer,
) -> None:
    token = token_for("forgetful")
    marker = "handset-model-4242"
    async with (
        running_gateway(make_settings(backend.url)) as gw,
        connect(gw.ws(token), additional_headers={"X-Device": marker}) as ws,
    ):
        assert (await recv_json(ws))["type"] == "connected"
        # The connection runs on the engine the suites name (a broken switch would find
        # none here), and keeps neither the token nor a header.
        await eventually(lambda: len(server_side_connections(WS_ENGINE)) == 1)
        (protocol,) = server_side_connections(WS_ENGINE)
        assert_nothing_of_the_handshake_kept(protocol, token, marker)
        # ...and the connection works through the server's receive/send.
        await ws.send('{"type":"ping"}')
        assert (await recv_json(ws))["type"] == "pong"
        await ws.send("not json")
        assert (await recv_json(ws))["type"] == "error"


async def test_a_closed_connection_is_freed_at_once_not_left_to_the_collector(
    backend: BackendServer,
) -> None:
    """The gateway collects the old generation rarely (app/server.py), so a closed connection
    left as cyclic garbage would hold its memory until then: reference counting alone must
    free it, the protocol that did the HTTP upgrade included."""

    async with running_gateway(make_settings(backend.url)) as gw:
        gc.collect()
        gc.disable()
        try:
            for n in range(5):
                async with connect(gw.ws(token_for(f"brief-{n}"))) as ws:
                    assert (await recv_json(ws))["type"] == "connected"
                    await ws.send('{"type":"start_session","payload":{"profileId":"p"}}')
                    assert (await recv_json(ws))["type"] == "session_started"
            await eventually(lambda: gw.app.service.instance_stats().connections == 0)
            await eventually(lambda: protocols_alive() == (0, 0))
        finally:
            gc.enable()


async def test_refused_and_reset_connections_are_freed_at_once_too(
    backend: BackendServer,
) -> None:
    """The two orders a connection can end in: the app returns first (a refused token: the
    gateway closes, the client's close reply comes later) and the socket goes first (a client
    that resets the TCP connection mid-session, no close frame)."""
    async with running_gateway(make_settings(backend.url)) as gw:
        gc.collect()
        gc.disable()
        try:
            for _ in range(3):
                async with connect(gw.ws("not-a-jwt")) as ws:
                    assert await closed_with(ws) == (4002, "Invalid token")
            for n in range(3):
                ws = await connect(gw.ws(token_for(f"reset-{n}")))
                assert (await recv_json(ws))["type"] == "connected"
                await ws.send('{"type":"start_session","payload":{"profileId":"p"}}')
                assert (await recv_json(ws))["type"] == "session_started"
                ws.transport.abort()  # RST, no close frame
            await eventually(lambda: gw.app.service.instance_stats().connections == 0)
            await eventually(lambda: protocols_alive() == (0, 0))
        finally:
            gc.enable()


BROKEN_FRAMES = {
    "reserved opcode (1002)": frame(0x3, b"x"),
    "invalid UTF-8 (1007)": frame(TEXT, b"\xff\xfe"),
    # A header that announces more than MAX_MESSAGE_BYTES: refused before any payload.
    "over the size limit (1009)": bytes([0x80 | BINARY, 0x80 | 127])
    + struct.pack("!Q", (3 << 20) + 1)
    + b"\x00" * 4,
}


@pytest.mark.parametrize("broken", list(BROKEN_FRAMES), ids=list(BROKEN_FRAMES))
async def test_a_connection_that_breaks_the_protocol_is_freed_at_once(
    backend: BackendServer, broken: str
) -> None:
    """The server's own close for a broken frame: the error the parser raised must not keep
    the connection (its traceback holds the parser's frame, the protocol and the last frame
    read, up to MAX_MESSAGE_BYTES) until a full collection."""
    async with running_gateway(make_settings(backend.url)) as gw:
        gc.collect()
        gc.disable()
        try:
            for n in range(3):
                opening = handshake(token_for(f"broken-{n}"))
                async with raw_socket(gw.port, opening) as (reader, writer, seen):
                    await read_until(reader, seen, TEXT)  # connected
                    writer.write(BROKEN_FRAMES[broken])
                    await read_until(reader, seen, CLOSE)
                    assert seen.close_code() in (1002, 1007, 1009)
            await eventually(lambda: gw.app.service.instance_stats().connections == 0)
            await eventually(lambda: protocols_alive() == (0, 0))
            # websockets' own protocol (the uvicorn engine's parser and its state) too.
            await eventually(lambda: sansio_protocols_alive() == 0)
        finally:
            gc.enable()
