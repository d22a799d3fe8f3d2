"""A frame over MAX_MESSAGE_BYTES closes with 1009, and the client sees the 1009 even while it
is still sending the rest of the frame (issue 11: lingering close), also when the app's end
would have closed the socket first (issue 28, item 5)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.integration.backend_server import BackendServer
from tests.integration.conftest import make_settings, recv_json, running_gateway, token_for
from tests.integration.raw_websocket import BINARY, ServerFrames, frame, handshake
from tests.integration.test_ws_budgets import serving

KEY = "push-key-for-tests-0123456789"


async def test_1009_reaches_the_client_every_time(backend: BackendServer) -> None:
    settings = make_settings(backend.url, max_message_bytes=64 * 1024, ws_audio_rate=0)
    seen: list[int | None] = []
    async with running_gateway(settings) as gw:
        for _ in range(50):
            # Not `async with`: websockets' own close after a close it received can trip
            # over its finished transport (asyncio's abort() after a flushed close()).
            ws = await connect(gw.ws(token_for("big")), max_size=None)
            await recv_json(ws)
            try:
                await ws.send(b"x" * (4 << 20))  # 4 MiB: far past the limit
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed:
                pass
            seen.append(ws.close_code)
            await asyncio.wait_for(ws.wait_closed(), 10)
    assert seen == [1009] * 50


def too_big_behind_a_reply(http: httpx.Client, port: int, user: str, size: int) -> int | None:
    """A client that reads only once it has sent its frame, with a reply of the gateway's still
    unread (a push): the 1009 close frame waits behind it in the gateway's socket. If the
    gateway closed the socket while the frame was still coming, the kernel's reset would
    throw that close frame away. The close code it saw."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    try:
        sock.connect(("127.0.0.1", port))
        sock.sendall(handshake(token_for(user)))
        seen = ServerFrames()
        while not seen.frames:  # the 101 and `connected`
            seen.feed(sock.recv(4096))
        pushed = http.post(
            f"http://127.0.0.1:{port}/internal/push",
            json={"userId": user, "payload": {"blob": "z" * 60_000}},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert pushed.status_code == 202
        taken = b""
        while b'"push"' not in taken:  # its start is out: the rest waits in the socket
            taken += sock.recv(64)
        seen.feed(taken)
        # A reset fails the send: what it still reads says whether the 1009 got through.
        with contextlib.suppress(OSError):
            sock.sendall(frame(BINARY, b"x" * size))
        with contextlib.suppress(OSError):
            while data := sock.recv(65536):
                seen.feed(data)
        return seen.close_code()
    finally:
        sock.close()


async def test_1009_outlives_the_apps_end_300_times_in_300() -> None:
    """uvicorn closes the socket as soon as the app returns; the lingering close must hold
    until the client's frame is in (it saw 1009 in 18-22 of 30 tries)."""
    async with serving(MAX_MESSAGE_BYTES="65536", PUSH_API_KEY=KEY) as served:

        def tries(worker: int) -> list[int | None]:
            with httpx.Client() as http:
                return [
                    too_big_behind_a_reply(http, served.port, f"big-{worker}-{n}", 512 * 1024)
                    for n in range(75)
                ]

        results = await asyncio.gather(*(asyncio.to_thread(tries, w) for w in range(4)))
    codes = [code for batch in results for code in batch]
    assert codes.count(1009) == 300, {code: codes.count(code) for code in set(codes)}
