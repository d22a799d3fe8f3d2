"""A hostile-capable backend on raw sockets: it records every byte of every upstream connection
and every request it parsed (with h11, a strict parser), and answers as the path says.

Paths (the first segment picks the behaviour; a request's ``x-tag`` header, else its target,
is echoed as the body ``tag=<tag>`` and in ``x-echo``, so a client can tell its own response
from another's):

- ``/ok/...``        read the whole body, answer 200 with the tag.
- ``/early/...``     answer 401 right after the head, *then* read (and discard) the body, as
                     servers that answer early do — the behaviour that made pooled
                     connections desync.
- ``/slow/<ms>/...`` read the body, wait ``ms``, answer 200 with the tag.
- ``/drop/...``      read the head and close without a byte of answer.
- ``/extra/...``     answer 200, and a second, unasked-for response in the same write.
- ``/head-body/...`` answer a HEAD with headers *and* a body it must not have.
- ``/nocontent/...`` answer 204 with a Content-Length, no body.
- ``/switch/...``    answer 101 Switching Protocols.
- ``/cors/...``      answer 200 with the backend's own Access-Control-* headers.
- ``/fail/...``      read the body, answer 500 (with the tag) and keep the connection open.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass, field

import h11


@dataclass
class Parsed:
    """One request as the backend parsed it."""

    connection: int
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name.lower():
                return value
        return None

    @property
    def tag(self) -> str:
        return self.header("x-tag") or self.target


@dataclass
class UpstreamRecord:
    """Everything that arrived on one upstream connection."""

    number: int
    raw: bytearray = field(default_factory=bytearray)
    requests: list[Parsed] = field(default_factory=list)
    closed_by_gateway: bool = False
    parse_error: str | None = None


def _response(status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    lines += [name + b": " + value + b"\r\n" for name, value in headers]
    return b"".join([*lines, b"\r\n", body])


def tagged(request: Parsed) -> bytes:
    """200 with the request's tag as the body and in ``x-echo`` (which a HEAD answer keeps)."""
    body = f"tag={request.tag}".encode()
    headers = [
        (b"content-type", b"text/plain"),
        (b"x-echo", request.tag.encode()),
        (b"content-length", b"%d" % len(body)),
    ]
    return _response(200, b"OK", headers, b"" if request.method == "HEAD" else body)


class RawBackend:
    def __init__(self) -> None:
        self.connections: list[UpstreamRecord] = []
        self._numbers = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    @property
    def requests(self) -> list[Parsed]:
        return [r for c in self.connections for r in c.requests]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record = UpstreamRecord(next(self._numbers))
        self.connections.append(record)
        conn = h11.Connection(h11.SERVER)
        current: Parsed | None = None
        answered = False
        try:
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    if not record.closed_by_gateway:  # a closed connection truncates, no more
                        record.parse_error = str(exc)
                    return
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    record.raw += data
                    if not data:
                        record.closed_by_gateway = True
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.ConnectionClosed):
                    record.closed_by_gateway = True
                    return
                if isinstance(event, h11.Request):
                    current = Parsed(
                        record.number,
                        event.method.decode(),
                        event.target.decode("latin-1"),
                        [(k.decode().lower(), v.decode("latin-1")) for k, v in event.headers],
                    )
                    record.requests.append(current)
                    answered = False
                    kind = current.target.split("/")[1] if current.target.count("/") > 1 else ""
                    if kind == "early":
                        writer.write(
                            _response(401, b"Unauthorized", [(b"content-length", b"0")], b"")
                        )
                        answered = True
                    elif kind == "drop":
                        return
                elif isinstance(event, h11.Data):
                    assert current is not None
                    current.body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert current is not None
                    current.complete = True
                    if not answered:
                        keep_going = await self._answer(current, writer)
                        if not keep_going:
                            return
                    # Tell h11 a response went out, so it parses the next request.
                    conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                    conn.send(h11.EndOfMessage())
                    await writer.drain()
                    conn.start_next_cycle()
        except (ConnectionError, h11.LocalProtocolError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, request: Parsed, writer: asyncio.StreamWriter) -> bool:
        """Write the response; False if the connection is to be closed after it."""
        parts = request.target.split("?")[0].split("/")
        kind = parts[1] if len(parts) > 2 else ""
        if kind == "slow":
            await asyncio.sleep(int(parts[2]) / 1000)
        if kind == "extra":
            writer.write(
                tagged(request)
                + _response(
                    200, b"OK", [(b"set-cookie", b"injected=1"), (b"content-length", b"0")], b""
                )
            )
            return True
        if kind == "head-body":
            headers = [(b"x-echo", request.tag.encode()), (b"content-length", b"11")]
            writer.write(_response(200, b"OK", headers, b"") + b"not-for-you")
            return True
        if kind == "nocontent":
            writer.write(_response(204, b"No Content", [(b"content-length", b"5")], b""))
            return True
        if kind == "switch":
            writer.write(
                _response(
                    101,
                    b"Switching Protocols",
                    [(b"connection", b"upgrade"), (b"upgrade", b"x")],
                    b"",
                )
            )
            return True
        if kind == "fail":
            body = f"tag={request.tag}".encode()
            headers = [(b"x-echo", request.tag.encode()), (b"content-length", b"%d" % len(body))]
            writer.write(_response(500, b"Internal Server Error", headers, body))
            return True
        if kind == "cors":
            body = f"tag={request.tag}".encode()
            writer.write(
                _response(
                    200,
                    b"OK",
                    [
                        (b"access-control-allow-origin", b"https://evil.test"),
                        (b"access-control-allow-credentials", b"true"),
                        (b"vary", b"Accept-Encoding"),
                        (b"content-length", b"%d" % len(body)),
                    ],
                    body,
                )
            )
            return True
        writer.write(tagged(request))
        return True
