"""A backend stand-in for the upload cases: it reads every audio body to its end (chunked or
not, as FastAPI's multipart parser does), keeps none of it, and answers the turn ``--delay``
seconds after the body's last byte. Sessions are created and ended at once. The turn's reply
audio is 3 bytes, or ``--reply-audio-bytes`` of an mp3-sized blob (the reply-audio case).

    python -m bench.upload_backend --port P --delay 0.05 [--reply-audio-bytes N]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
from typing import cast

import httptools
import uvloop

TURN = (
    b'{"user_text":"I goed to the market","assistant_text":"Nice! What did you buy?",'
    b'"assistant_audio_base64":"SUQz","corrections":[{"original":"I goed","corrected":'
    b'"I went","explanation":"irregular past"}],"vocabulary_introduced":["market"]}'
)
SESSION = b'{"id":"sess-1","topic":null}'


def turn_with_audio(size: int) -> bytes:
    """The turn, its reply audio ``size`` bytes (an ID3 tag, then bytes that compress
    poorly, as mp3 does); 0: the usual 3 bytes."""
    if size == 0:
        return TURN
    audio = b"ID3" + bytes((i * 7919 + i // 251) % 256 for i in range(size - 3))
    return TURN.replace(b'"SUQz"', b'"' + base64.b64encode(audio) + b'"')


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
    def __init__(self, delay: float, turn: bytes = TURN) -> None:
        self._delay = delay
        self._turn = turn
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
            asyncio.get_running_loop().call_later(self._delay, self._answer, b"200 OK", self._turn)
        elif url == b"/conversations/sessions":
            self._answer(b"201 Created", SESSION)
        else:
            self._answer(b"200 OK", b"{}")

    def _answer(self, status: bytes, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(response(status, body))


async def serve(port: int, delay: float, reply_audio_bytes: int = 0) -> None:
    loop = asyncio.get_running_loop()
    turn = turn_with_audio(reply_audio_bytes)
    server = await loop.create_server(
        lambda: Connection(delay, turn), "127.0.0.1", port, backlog=4096
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--reply-audio-bytes", type=int, default=0)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.delay, args.reply_audio_bytes))


if __name__ == "__main__":
    main()
