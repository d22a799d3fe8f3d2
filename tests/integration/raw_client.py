"""A client on a raw socket, for requests no well-behaved HTTP client would send."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import h11


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers_named(name)
        return values[0] if values else None

    def headers_named(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_response(
    reader: asyncio.StreamReader, method: str = "GET", within: float = 10.0
) -> RawResponse:
    """Parse one response (h11, strict) from what the gateway sends."""
    parser = h11.Connection(h11.CLIENT)
    # h11 answers only a request it has seen go out; the bytes were written by hand.
    parser.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    parser.send(h11.EndOfMessage())
    status = 0
    headers: list[tuple[str, str]] = []
    body = bytearray()
    async with asyncio.timeout(within):
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                parser.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = [(k.decode().lower(), v.decode("latin-1")) for k, v in event.headers]
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return RawResponse(status, headers, bytes(body))
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("the gateway closed the connection without a response")


async def exchange(port: int, data: bytes, method: str = "GET") -> RawResponse:
    """Send ``data`` on a new connection and read one response."""
    reader, writer = await connect(port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_response(reader, method)
    finally:
        writer.close()
