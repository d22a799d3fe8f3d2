"""A lean WebSocket load client: raw asyncio protocol, pre-encoded frames, no per-message library
overhead, so the figures measure the gateway rather than the client."""

from __future__ import annotations

import asyncio
import base64
import collections
import os
import struct
import time
from collections.abc import Callable
from typing import Final, cast

_HANDSHAKE_END: Final = b"\r\n\r\n"
_ZERO_MASK: Final = b"\x00\x00\x00\x00"  # a valid key; XOR with it leaves the payload as is
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, final client frame."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return header + _ZERO_MASK + payload


class ClosedError(Exception):
    def __init__(self, code: int | None) -> None:
        super().__init__(f"closed with {code}")
        self.code = code


class WsClient(asyncio.Protocol):
    """One connection. ``recv`` returns the next text message's raw bytes."""

    def __init__(self, host: str, path: str) -> None:
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self._buffer = bytearray()
        self._upgraded = False
        self._messages: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        # When set, text messages go straight to this callback (no queue, no task switch).
        self.on_text: Callable[[bytes], None] | None = None
        # When set, binary messages go to this callback; else they are dropped (the gateway
        # sends some only to a session that asked for binary reply audio).
        self.on_binary: Callable[[bytes], None] | None = None
        self.wire_bytes = 0  # every frame received since the upgrade, headers included

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance here.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded:
            end = self._buffer.find(_HANDSHAKE_END)
            if end < 0:
                return
            if not self._buffer.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(
                    ConnectionError(bytes(self._buffer[:60]).decode(errors="replace"))
                )
                return
            del self._buffer[: end + 4]
            self._upgraded = True
            self.opened.set_result(None)
        self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("connection lost"))
        if self.close_code is None:
            self.close_code = 1006
        self._wake()
        if self.on_text is not None:
            self.on_text(b"")  # let a driver see the end

    # -- frames --------------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self._buffer
        while len(buf) >= 2:
            opcode = buf[0] & 0x0F
            size = buf[1] & 0x7F
            offset = 2
            if size == 126:
                if len(buf) < 4:
                    return
                size = struct.unpack_from("!H", buf, 2)[0]
                offset = 4
            elif size == 127:
                if len(buf) < 10:
                    return
                size = struct.unpack_from("!Q", buf, 2)[0]
                offset = 10
            if len(buf) < offset + size:
                return
            payload = bytes(buf[offset : offset + size])
            del buf[: offset + size]
            self.wire_bytes += offset + size
            if opcode == TEXT:
                if self.on_text is not None:
                    self.on_text(payload)
                    continue
                self._messages.append(payload)
                self._wake()
            elif opcode == BINARY:
                if self.on_binary is not None:
                    self.on_binary(payload)
            elif opcode == PING and self.transport is not None:
                self.transport.write(client_frame(PONG, payload))
            elif opcode == CLOSE:
                self.close_code = (
                    struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else 1005
                )
                if self.transport is not None:
                    self.transport.close()
                self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- API -----------------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        assert self.transport is not None
        self.transport.write(frame)

    async def recv(self) -> bytes:
        while not self._messages:
            if self.close_code is not None:
                raise ClosedError(self.close_code)
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._messages.popleft()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(CLOSE, struct.pack("!H", 1000)))
            self.transport.close()


class RequestLoop:
    """Send ``frame``, wait for a reply containing ``expect``, repeat ``count`` times.

    Driven from the protocol's callbacks, so the client spends as little CPU per round trip
    as Python allows. ``done`` resolves when the loop ends; latencies are in seconds.
    """

    def __init__(self, client: WsClient, frame: bytes, expect: bytes, count: int) -> None:
        self._client = client
        self._frame = frame
        self._expect = expect
        self._remaining = count
        self._sent = 0.0
        self.latencies: list[float] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start(self) -> None:
        self._client.on_text = self._on_text
        self._send()

    def _send(self) -> None:
        self._sent = time.perf_counter()
        self._client.send(self._frame)

    def _on_text(self, payload: bytes) -> None:
        if self.done.done():
            return
        if self._expect not in payload:
            self.done.set_exception(
                RuntimeError(f"expected {self._expect!r}, got {payload[:120]!r}")
            )
            return
        self.latencies.append(time.perf_counter() - self._sent)
        self._remaining -= 1
        if self._remaining > 0:
            self._send()
        else:
            self._client.on_text = None
            self.done.set_result(None)


async def open_client(port: int, token: str) -> WsClient:
    """Connect, complete the handshake and read the ``connected`` welcome."""
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: WsClient(f"127.0.0.1:{port}", f"/ws?token={token}"), "127.0.0.1", port
    )
    await client.opened
    welcome = await client.recv()
    if b'"connected"' not in welcome:
        raise ConnectionError(f"unexpected welcome {welcome[:80]!r}")
    return client
