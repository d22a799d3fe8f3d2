"""The scale harness's client process (bench/scale/clients.py) against a stand-in server on a
real socket: every handshake outcome counted in its class, the server's pings answered and
counted while held, and the clean close — the counts `python -m bench.scale` reports."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from bench.scale.clients import ClientPlan, ClientProcess, CloseReport, HoldReport, RampReport
from bench.scale.frames import CLOSE, PING, PONG, TEXT

WELCOME = b'{"type":"connected","payload":{}}'


def server_frame(opcode: int, payload: bytes) -> bytes:
    return bytes([0x80 | opcode, len(payload)]) + payload


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size == 126:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
    mask = await reader.readexactly(4)
    data = await reader.readexactly(size)
    return first & 0x0F, bytes(b ^ mask[n % 4] for n, b in enumerate(data))


@dataclass
class StandIn:
    """Answers each path its own way; counts the pongs and close frames it got."""

    pongs: asyncio.Queue[None] = field(default_factory=asyncio.Queue)
    closes: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ", 2)[1]
        if path == b"/busy":
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\r\n")
        elif path == b"/forbidden":
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        elif path == b"/reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif path == b"/silent":
            await reader.read()  # until the client gives up
        elif path == b"/kick":  # welcomed, then let go at once (as a keepalive timeout does)
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
            writer.write(server_frame(TEXT, WELCOME))
            writer.write(server_frame(CLOSE, struct.pack("!H", 1011)))
        elif path == b"/ok":
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
            writer.write(server_frame(TEXT, WELCOME))
            await self.hold(reader, writer)
        writer.close()

    async def hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def ping() -> None:
            while True:
                await asyncio.sleep(0.05)
                writer.write(server_frame(PING, b"beat"))

        pinging = asyncio.create_task(ping())
        with contextlib.suppress(asyncio.IncompleteReadError):  # a client process stopped
            await self.frames(reader, writer)
        pinging.cancel()

    async def frames(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The client's frames: pongs counted, a close answered (and the end)."""
        while True:
            opcode, payload = await read_client_frame(reader)
            if opcode == PONG and payload == b"beat":
                self.pongs.put_nowait(None)
            elif opcode == CLOSE:
                self.closes += 1
                writer.write(server_frame(CLOSE, payload))
                return


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[StandIn, int]]:
    server_state = StandIn()
    server = await asyncio.start_server(server_state.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield server_state, port


def request(path: str, port: int) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def test_every_outcome_counted_pings_answered_and_the_close_clean(
    stand_in: tuple[StandIn, int],
) -> None:
    server, port = stand_in
    paths = ("/ok", "/busy", "/forbidden", "/reset", "/close", "/silent", "/kick")
    plan = ClientPlan(
        index=0,
        source="127.0.2.1",
        host="127.0.0.1",
        port=port,
        count=len(paths),
        rate=1000.0,
        in_flight=len(paths),
        ramp_budget=3.0,
        handshake_timeout=1.0,
        requests=tuple(request(path, port) for path in paths),
        heartbeat=0.05,
        tolerance=60.0,
        deadline=30.0,
    )
    client = ClientProcess(plan)
    client.start()
    try:
        ready = await asyncio.to_thread(client.receive, 60)
        assert ready[0] == "ready"
        client.send("ramp", time.time())
        ramp: RampReport = await asyncio.to_thread(client.receive, 30)
        assert ramp.outcomes == {
            "ok": 2,
            "retry_after:503": 1,
            "status:403": 1,
            "reset": 1,
            "closed": 1,
            "timeout:response": 1,
        }
        assert ramp.attempted == 7
        assert ramp.held == 1
        assert ramp.dropped == {"close 1011": 1}

        client.send("hold")
        assert await asyncio.to_thread(client.receive, 30) == ("holding",)
        while not server.pongs.empty():
            server.pongs.get_nowait()  # answered before the hold
        for _ in range(4):  # one may answer a ping from before the hold
            await asyncio.wait_for(server.pongs.get(), 30)
        client.send("report")
        hold: HoldReport = await asyncio.to_thread(client.receive, 30)
        assert hold.held == 1
        assert hold.dropped == {}
        assert hold.ping_total >= 3
        assert hold.pings.low == hold.pings.high == hold.ping_total
        assert len(hold.gaps) == hold.ping_total
        assert hold.overdue == 0

        client.send("close")
        close: CloseReport = await asyncio.to_thread(client.receive, 30)
        assert (close.sent, close.clean, close.other, close.unfinished) == (1, 1, 0, 0)
        assert server.closes == 1
    finally:
        client.stop()
