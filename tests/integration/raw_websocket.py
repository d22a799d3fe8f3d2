"""A WebSocket client on a raw socket, for frames no well-behaved client would send: floods of
empty frames, pings it never reads the pongs of, bytes behind its own close, frames in the
handshake's own segment."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

HANDSHAKE = (
    "GET /ws{query} HTTP/1.1\r\nhost: gw\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
    "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n{extra}\r\n"
)

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def handshake(token: str | None, extra_headers: str = "") -> bytes:
    query = "" if token is None else f"?token={token}"
    return HANDSHAKE.format(query=query, extra=extra_headers).encode()


def frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """A client frame (masked, with an all-zero key: the payload goes as it is)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", size)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", size)
    return head + b"\0\0\0\0" + payload


@dataclass
class ServerFrames:
    """The frames the server sent, parsed from its bytes as they come (the 101 first)."""

    buffer: bytearray = field(default_factory=bytearray)
    head: bytes | None = None  # the handshake's answer, once complete
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    counts: dict[int, int] = field(default_factory=dict)
    keep: bool = True  # False: only count them (a flood's answers)

    def feed(self, data: bytes) -> None:
        self.buffer += data
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = bytes(self.buffer[: end + 4])
            del self.buffer[: end + 4]
        start = 0
        buffer = self.buffer
        while len(buffer) - start >= 2:
            size = buffer[start + 1] & 0x7F
            at = start + 2
            if size == 126:
                if len(buffer) - at < 2:
                    break
                (size,) = struct.unpack_from("!H", buffer, at)
                at += 2
            elif size == 127:
                if len(buffer) - at < 8:
                    break
                (size,) = struct.unpack_from("!Q", buffer, at)
                at += 8
            if len(buffer) - at < size:
                break
            opcode = buffer[start] & 0x0F
            self.counts[opcode] = self.counts.get(opcode, 0) + 1
            if self.keep:
                self.frames.append((opcode, bytes(buffer[at : at + size])))
            start = at + size
        del buffer[:start]

    def close_code(self) -> int | None:
        for opcode, payload in self.frames:
            if opcode == CLOSE and len(payload) >= 2:
                code: int = struct.unpack("!H", payload[:2])[0]
                return code
        return None


async def open_raw(
    port: int, data: bytes, host: str = "127.0.0.1", sock: socket.socket | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, ServerFrames]:
    """Connect (from ``sock`` if given), send ``data`` (a handshake and whatever follows it,
    in one write) and read until the server's answer to the handshake is complete."""
    if sock is None:
        reader, writer = await asyncio.open_connection(host, port)
    else:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(data)
    seen = ServerFrames()
    async with asyncio.timeout(10):
        while seen.head is None:
            chunk = await reader.read(65536)
            if not chunk:
                raise ConnectionResetError("the gateway closed before answering the handshake")
            seen.feed(chunk)
    return reader, writer, seen


@asynccontextmanager
async def raw_socket(
    port: int, data: bytes
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter, ServerFrames]]:
    """``open_raw``, the socket dropped at the end whatever happened."""
    reader, writer, seen = await open_raw(port, data)
    try:
        yield reader, writer, seen
    finally:
        writer.transport.abort()


async def read_until(
    reader: asyncio.StreamReader, seen: ServerFrames, opcode: int, within: float = 10.0
) -> None:
    """Read until a frame of ``opcode`` has arrived (it may have already)."""
    async with asyncio.timeout(within):
        while not any(op == opcode for op, _ in seen.frames):
            chunk = await reader.read(65536)
            if not chunk:
                raise ConnectionResetError("the gateway closed first")
            seen.feed(chunk)


def reset(writer: asyncio.StreamWriter) -> None:
    """Vanish as a phone losing its network does to the server: an RST, no close frame."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
