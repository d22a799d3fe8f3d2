"""The native WebSocket engine (WS_ENGINE=native, issue 27) over real sockets, whatever
engine the rest of the suites run on (KALAMI_TEST_WS_ENGINE): what an accepted connection
keeps, frames sent right behind the handshake in the same TCP segment, and that
permessage-deflate stops it from starting. That a closed connection is freed by reference
counting alone is test_ws_protocol.py's, run on both engines by ``make test``."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from typing import cast

from litestar import WebSocket
from websockets.asyncio.client import connect

from kalami_gateway.adapters.server.native.protocol import NativeWebSocketProtocol
from tests.integration.backend_server import BackendServer
from tests.integration.conftest import (
    eventually,
    make_settings,
    recv_json,
    running_gateway,
    token_for,
)
from tests.integration.raw_websocket import PING, PONG, TEXT, frame, handshake, raw_socket
from tests.integration.test_lifecycle import free_port, gateway_env
from tests.integration.ws_engines import server_side_connections


def native_connections() -> list[NativeWebSocketProtocol]:
    return cast("list[NativeWebSocketProtocol]", server_side_connections("native"))


async def test_an_accepted_native_connection_keeps_nothing_of_its_handshake(
    backend: BackendServer,
) -> None:
    token = token_for("native-forgetful")
    marker = "handset-model-4242"
    async with (
        running_gateway(make_settings(backend.url, ws_engine="native")) as gw,
        connect(gw.ws(token), additional_headers={"X-Device": marker}) as ws,
    ):
        assert (await recv_json(ws))["type"] == "connected"
        await eventually(lambda: len(native_connections()) == 1)
        (protocol,) = native_connections()
        # The handler handed its message loop over (hand_off) and returned: the scope, and
        # what Litestar's layers put in it, is let go; so are Litestar's connection objects.
        assert protocol.scope is None
        assert protocol._serving is None  # running, in the app's task
        assert not [o for o in gc.get_objects() if isinstance(o, WebSocket)]
        assert protocol._handshake is None
        assert marker not in repr(gc.get_referents(protocol))
        await ws.send('{"type":"ping"}')
        assert (await recv_json(ws))["type"] == "pong"
        await ws.ping(b"heartbeat")  # a protocol ping, answered by the engine itself
        await ws.send("not json")
        assert (await recv_json(ws))["type"] == "error"


async def test_frames_behind_the_handshake_in_the_same_segment_are_not_lost(
    backend: BackendServer,
) -> None:
    behind = frame(PING, b"1") + frame(PING, b"2") + frame(TEXT, b'{"type":"ping"}')
    async with (
        running_gateway(make_settings(backend.url, ws_engine="native")) as gw,
        raw_socket(gw.port, handshake(token_for("native-eager")) + behind) as (
            reader,
            _,
            seen,
        ),
    ):
        assert seen.head is not None
        assert seen.head.startswith(b"HTTP/1.1 101 ")  # nothing of theirs before it
        async with asyncio.timeout(10):
            while len([op for op, _ in seen.frames if op in (PONG, TEXT)]) < 4:
                chunk = await reader.read(65536)
                assert chunk, f"closed, after {seen.frames}"
                seen.feed(chunk)
    assert [p for op, p in seen.frames if op == PONG] == [b"1", b"2"]
    texts = [json.loads(p)["type"] for op, p in seen.frames if op == TEXT]
    assert texts == ["connected", "pong"]


async def test_the_native_engine_with_permessage_deflate_does_not_start() -> None:
    env = gateway_env(
        "http://127.0.0.1:9",
        free_port(),
        BACKEND_MODE="stub",
        WS_ENGINE="native",
        WS_PER_MESSAGE_DEFLATE="true",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kalami_gateway",
        "serve",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert b"configuration error" in stderr
    assert b"WS_PER_MESSAGE_DEFLATE" in stderr
