"""The native WebSocket engine (WS_ENGINE=native, issue 27) over real sockets, whatever
engine the rest of the suites run on (KALAMI_TEST_WS_ENGINE): what an accepted connection
keeps, that a closed one is freed by reference counting alone, frames sent right behind the
handshake in the same TCP segment, and that permessage-deflate stops it from starting."""

from __future__ import annotations

import asyncio
import gc
import json
import sys

from litestar import WebSocket
from websockets.asyncio.client import connect

from kalami_gateway.adapters.server.http_protocol import GuardedHttpProtocol
from kalami_gateway.adapters.server.native.protocol import NativeWebSocketProtocol
from tests.integration.backend_server import BackendServer
from tests.integration.conftest import (
    closed_with,
    eventually,
    make_settings,
    recv_json,
    running_gateway,
    token_for,
)
from tests.integration.raw_websocket import PING, PONG, TEXT, frame, handshake, raw_socket
from tests.integration.test_lifecycle import free_port, gateway_env


def native_connections() -> list[NativeWebSocketProtocol]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, NativeWebSocketProtocol)]


def protocols_alive() -> tuple[int, int]:
    """Protocol objects still tracked, unreachable ones included (with the collector off,
    cyclic garbage stays visible here)."""
    kinds = [type(o) for o in gc.get_objects()]
    return (
        sum(1 for k in kinds if issubclass(k, NativeWebSocketProtocol)),
        sum(1 for k in kinds if issubclass(k, GuardedHttpProtocol)),
    )


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


async def test_closed_refused_and_reset_native_connections_are_freed_at_once(
    backend: BackendServer,
) -> None:
    async with running_gateway(make_settings(backend.url, ws_engine="native")) as gw:
        gc.collect()
        gc.disable()
        try:
            for n in range(3):
                async with connect(gw.ws(token_for(f"native-brief-{n}"))) as ws:
                    assert (await recv_json(ws))["type"] == "connected"
                    await ws.send('{"type":"start_session","payload":{"profileId":"p"}}')
                    assert (await recv_json(ws))["type"] == "session_started"
            for _ in range(3):
                async with connect(gw.ws("not-a-jwt")) as ws:
                    assert await closed_with(ws) == (4002, "Invalid token")
            for n in range(3):
                ws = await connect(gw.ws(token_for(f"native-reset-{n}")))
                assert (await recv_json(ws))["type"] == "connected"
                ws.transport.abort()  # RST, no close frame
            await eventually(lambda: gw.app.service.instance_stats().connections == 0)
            await eventually(lambda: protocols_alive() == (0, 0))
        finally:
            gc.enable()


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
