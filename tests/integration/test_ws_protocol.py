"""What an accepted connection keeps of its handshake (issue 15): nothing the server, the
parser or the app would read again — not the headers, not the token in the query — and its
frames still flow through the server's own receive/send; a closed one is freed by reference
counting alone. On the engine the suites run on (KALAMI_TEST_WS_ENGINE, ``ws_engines.py``):
each test looks where that engine would keep a connection."""

from __future__ import annotations

import gc

from websockets.asyncio.client import connect

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
from tests.integration.ws_engines import (
    assert_nothing_of_the_handshake_kept,
    server_side_connections,
    websocket_protocols_alive,
)


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
