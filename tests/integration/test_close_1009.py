"""A frame over MAX_MESSAGE_BYTES closes with 1009, and the client sees the 1009 even while it
is still sending the rest of the frame (issue 11: lingering close)."""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.integration.backend_server import BackendServer
from tests.integration.conftest import make_settings, recv_json, running_gateway, token_for


async def test_1009_reaches_the_client_every_time(backend: BackendServer) -> None:
    settings = make_settings(backend.url, max_message_bytes=64 * 1024, ws_audio_rate=0)
    seen: list[int | None] = []
    async with running_gateway(settings) as gw:
        for _ in range(50):
            async with connect(gw.ws(token_for("big")), max_size=None) as ws:
                await recv_json(ws)
                try:
                    await ws.send(b"x" * (4 << 20))  # 4 MiB: far past the limit
                    await asyncio.wait_for(ws.recv(), 10)
                except ConnectionClosed:
                    pass
                seen.append(ws.close_code)
    assert seen == [1009] * 50
