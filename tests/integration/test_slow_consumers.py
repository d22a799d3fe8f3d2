"""Slow consumers (issue 11): a client that stops reading while the gateway has data for it is
let go — past WS_SEND_BUFFER_BYTES of unsent data, or a send waiting past WS_SEND_TIMEOUT —
and nobody else is held up."""

from __future__ import annotations

import asyncio
import base64
import os

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.integration.backend_server import BackendServer
from tests.integration.conftest import (
    Gateway,
    eventually,
    make_settings,
    recv_json,
    running_gateway,
    token_for,
)
from tests.integration.raw_client import connect as raw_connect

KEY = "push-key-for-tests-0123456789"
HANDSHAKE = (
    "GET /ws?token={token} HTTP/1.1\r\nhost: gw\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
    "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
)


async def a_client_that_never_reads(gw: Gateway, user: str) -> asyncio.StreamWriter:
    """Handshake, then never read a byte: its receive buffer, then the gateway's send buffer,
    fill up."""
    reader, writer = await raw_connect(gw.port)
    reader._transport.pause_reading()  # type: ignore[attr-defined]  # read nothing, ever
    writer.write(HANDSHAKE.format(token=token_for(user)).encode())
    await writer.drain()
    return writer


async def push_to(gw: Gateway, user: str, size: int, times: int) -> None:
    blob = base64.b64encode(os.urandom(size)).decode()
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(times):
            response = await client.post(
                f"{gw.http}/internal/push",
                json={"userId": user, "payload": {"blob": blob}},
                headers={"Authorization": f"Bearer {KEY}"},
            )
            assert response.status_code == 202


async def connections(gw: Gateway) -> int:
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"{gw.http}/stats")).json()
        return int(body["websocket"]["connections"])


async def slow_consumer_closes(gw: Gateway) -> bool:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{gw.http}/metrics")).text
    return 'kalami_websocket_closed_total{reason="slow_consumer"} 1.0' in text


@pytest.mark.parametrize(
    ("overrides", "size", "times"),
    [
        ({"ws_send_buffer_bytes": 256 * 1024, "ws_send_timeout_ms": 60_000}, 45_000, 200),
        ({"ws_send_timeout_ms": 500}, 45_000, 200),
    ],
    ids=["buffer", "timeout"],
)
async def test_a_client_that_stops_reading_is_let_go_and_others_are_not_held(
    backend: BackendServer, overrides: dict[str, int], size: int, times: int
) -> None:
    settings = make_settings(backend.url, push_api_key=KEY, ws_message_rate=0, **overrides)
    async with running_gateway(settings) as gw, connect(gw.ws(token_for("bystander"))) as other:
        await recv_json(other)
        sleepy = await a_client_that_never_reads(gw, "sleepy")
        await eventually(lambda: _is(gw, 2))
        # more than the kernel's socket buffers hold on loopback (several MB), never read
        await push_to(gw, "sleepy", size, times)
        await eventually(lambda: slow_consumer_closes(gw), within=15)
        await eventually(lambda: _is(gw, 1))
        await other.send('{"type":"ping"}')
        assert (await recv_json(other))["type"] == "pong"
        sleepy.close()


async def _is(gw: Gateway, expected: int) -> bool:
    return await connections(gw) == expected
