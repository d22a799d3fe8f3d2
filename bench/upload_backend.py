"""A backend stand-in for the upload cases: it reads every audio body to its end (chunked or
not, as FastAPI's multipart parser does), keeps none of it, and answers the turn ``--delay``
seconds after the body's last byte. Sessions are created and ended at once.

    python -m bench.upload_backend --port P --delay 0.05
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

import httptools
import uvloop

TURN = (
    b'{"user_text":"I goed to the market","assistant_text":"Nice! What did you buy?",'
    b'"assistant_audio_base64":"SUQz","corrections":[{"original":"I goed","corrected":'
    b'"I went","explanation":"irregular past"}],"vocabulary_introduced":["market"]}'
)
SESSION = b'{"id":"sess-1","topic":null}'


def response(status: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class Connection(asyncio.Protocol):
    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url = url

    def on_body(self, body: bytes) -> None:
        pass  # read and dropped, as it comes

    def on_message_complete(self) -> None:
        url = self._url
        if url.endswith(b"/audio"):
            asyncio.get_running_loop().call_later(self._delay, self._answer, b"200 OK", TURN)
        elif url == b"/conversations/sessions":
            self._answer(b"201 Created", SESSION)
        else:
            self._answer(b"200 OK", b"{}")

    def _answer(self, status: bytes, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(response(status, body))


async def serve(port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(delay), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.delay))


if __name__ == "__main__":
    main()
