"""What an accepted connection keeps of its handshake (issue 15): nothing the server, the
parser or the app would read again — not the headers, not the token in the query — and its
frames still flow through the server's own receive/send."""

from __future__ import annotations

import gc

from websockets.asyncio.client import connect

from kalami_gateway.adapters.server.http_protocol import GuardedHttpProtocol
from kalami_gateway.adapters.server.ws_protocol import LivelyWebSocketProtocol
from tests.integration.backend_server import BackendServer
from tests.integration.conftest import (
    closed_with,
    eventually,
    make_settings,
    recv_json,
    running_gateway,
    token_for,
)


def server_side_connections() -> list[LivelyWebSocketProtocol]:
    gc.collect()  # closed connections of earlier tests are cyclic garbage
    return [o for o in gc.get_objects() if isinstance(o, LivelyWebSocketProtocol)]


def protocols_alive() -> tuple[int, int]:
    """WebSocket and HTTP protocol objects still tracked, unreachable ones included (with the
    collector off, cyclic garbage stays visible here). type() rather than isinstance(): a
    dead weak proxy among the objects raises on isinstance."""
    kinds = [type(o) for o in gc.get_objects()]
    return (
        sum(1 for k in kinds if issubclass(k, LivelyWebSocketProtocol)),
        sum(1 for k in kinds if issubclass(k, GuardedHttpProtocol)),
    )


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
        await eventually(lambda: len(server_side_connections()) == 1)
        (protocol,) = server_side_connections()
        assert "request" not in vars(protocol)
        assert "response" not in vars(protocol)
        assert protocol.scope["headers"] == []
        assert protocol.scope["query_string"] == b""
        # websockets' handshake parser stays suspended for the connection's life, holding
        # the Request it parsed: emptied, so neither the token nor a header lives on there.
        held = protocol.conn.parser.gi_frame.f_locals["request"]  # type: ignore[attr-defined]
        assert list(held.headers.raw_items()) == []
        assert token not in held.path
        assert marker not in repr(held)
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
