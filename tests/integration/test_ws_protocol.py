"""What an accepted connection keeps of its handshake (issue 15): nothing the server, the
parser or the app would read again — not the headers, not the token in the query — and its
frames still flow through the server's own receive/send."""

from __future__ import annotations

import gc

from websockets.asyncio.client import connect

from kalami_gateway.adapters.ws_protocol import LivelyWebSocketProtocol
from tests.integration.backend_server import BackendServer
from tests.integration.conftest import (
    eventually,
    make_settings,
    recv_json,
    running_gateway,
    token_for,
)


def server_side_connections() -> list[LivelyWebSocketProtocol]:
    gc.collect()  # closed connections of earlier tests are cyclic garbage
    return [o for o in gc.get_objects() if isinstance(o, LivelyWebSocketProtocol)]


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
