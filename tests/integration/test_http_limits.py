"""HTTP hardening at the socket (issue 11): a request's line and headers have a deadline and
size limits, on every route and every WebSocket handshake; each refusal is answered and the
socket closed, never left hanging."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect as ws_connect

from tests.integration.backend_server import BackendServer
from tests.integration.conftest import make_settings, running_gateway, token_for
from tests.integration.raw_client import connect


async def answer_and_close(port: int, data: bytes) -> bytes:
    """Send ``data``, then read until the gateway closes."""
    reader, writer = await connect(port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), 10)  # EOF: the gateway closed
    finally:
        writer.close()


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


@pytest.mark.parametrize("path", ["/health", "/api/x", "/ws"])
async def test_a_request_line_over_16_kib_is_414_and_closed(
    backend: BackendServer, path: str
) -> None:
    async with running_gateway(make_settings(backend.url)) as gw:
        target = path + "?token=" + "t" * 17_000
        upgrade = b"upgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-version: 13\r\n"
        upgrade += b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        head = f"GET {target} HTTP/1.1\r\nhost: gw\r\n".encode()
        reply = await answer_and_close(
            gw.port, head + (upgrade if path == "/ws" else b"") + b"\r\n"
        )
    assert status_of(reply) == 414
    assert b"connection: close" in reply


@pytest.mark.parametrize(
    "headers",
    [
        b"".join(b"x-h%d: %b\r\n" % (n, b"v" * 1000) for n in range(40)),  # 40 KB in total
        b"x-big: " + b"v" * 17_000 + b"\r\n",  # one line over 16 KiB
        b"".join(b"x-h%d: v\r\n" % n for n in range(150)),  # too many
    ],
    ids=["total", "one-line", "count"],
)
@pytest.mark.parametrize("path", ["/health", "/api/x", "/ws"])
async def test_headers_too_large_are_431_and_closed(
    backend: BackendServer, path: str, headers: bytes
) -> None:
    async with running_gateway(make_settings(backend.url)) as gw:
        head = f"GET {path}?token={token_for('a')} HTTP/1.1\r\nhost: gw\r\n".encode()
        reply = await answer_and_close(gw.port, head + headers + b"\r\n")
    assert status_of(reply) == 431
    assert backend.requests == []


async def test_slow_headers_get_408_and_the_socket_is_closed(backend: BackendServer) -> None:
    async with running_gateway(make_settings(backend.url, http_header_timeout_ms=500)) as gw:
        # slowloris: a line, then one header byte at a time, never the end of the headers
        reader, writer = await connect(gw.port)
        writer.write(b"GET /health HTTP/1.1\r\nhost: gw\r\nx-slow: ")
        await writer.drain()

        async def drip() -> None:
            for _ in range(20):
                await asyncio.sleep(0.1)
                writer.write(b"a")

        dripping = asyncio.create_task(drip())
        reply = await asyncio.wait_for(reader.read(-1), 10)
        dripping.cancel()
        writer.close()
        assert status_of(reply) == 408
        # a connection that never sends anything is closed too
        silent = await answer_and_close(gw.port, b"")
    assert status_of(silent) == 408


async def test_normal_requests_and_handshakes_are_untouched(backend: BackendServer) -> None:
    async with running_gateway(make_settings(backend.url, http_header_timeout_ms=500)) as gw:
        reply = await answer_and_close(
            gw.port, b"GET /health HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n"
        )
        assert status_of(reply) == 200
        async with ws_connect(gw.ws(token_for("a"))) as ws:
            await asyncio.sleep(0.8)  # longer than the header deadline: the socket stays
            await ws.send('{"type":"ping"}')
            assert "connected" in str(await ws.recv())
            assert "pong" in str(await ws.recv())
