"""The asyncio shell around the exchange, on a fake transport (no sockets): what it writes,
what it hands the relay, what it adds to the exchange's verdict (the socket still open, the
response body all taken), and how the pool acts on that verdict."""

from __future__ import annotations

import asyncio

import pytest

from kalami_gateway.adapters.proxy.connection import (
    READ_HIGH_WATER,
    UpstreamConnection,
    UpstreamResponse,
)
from kalami_gateway.adapters.proxy.errors import UpstreamError
from kalami_gateway.adapters.proxy.exchange import HttpExchange
from kalami_gateway.adapters.proxy.pool import UpstreamPool

GET = b"GET /x HTTP/1.1\r\nhost: backend\r\n"
OK_HELLO = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


class FakeTransport:
    """What the connection does to its socket, recorded. Closing it does not call
    ``connection_lost``: a test does, when the close is to be seen."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def connected() -> tuple[UpstreamConnection, FakeTransport]:
    conn = UpstreamConnection(asyncio.get_running_loop())
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


async def test_a_request_goes_out_as_the_exchange_frames_it_and_its_answer_comes_back() -> None:
    conn, transport = connected()
    head = conn.begin(HttpExchange(body_length=2), b"POST /x HTTP/1.1\r\nhost: b\r\n", b"{}")
    assert bytes(transport.written) == b"POST /x HTTP/1.1\r\nhost: b\r\ncontent-length: 2\r\n\r\n{}"
    conn.data_received(OK_HELLO)
    response = await head
    assert (response.status, response.headers) == (200, [(b"Content-Length", b"5")])
    assert response.complete
    assert response.body() == b"hello"
    assert conn.reusable


async def test_a_streamed_body_is_framed_by_the_exchange() -> None:
    conn, transport = connected()
    conn.begin(HttpExchange(chunked=True, streams_body=True), GET)
    conn.send_body(b"hello")
    conn.end_body()
    assert bytes(transport.written).endswith(
        b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )


async def test_a_body_not_all_taken_keeps_the_connection_out_of_the_pool() -> None:
    conn, _ = connected()
    head = conn.begin(HttpExchange(), GET)
    conn.data_received(OK_HELLO)
    response = await head
    assert not conn.reusable  # "hello" still waits for the relay
    assert [chunk async for chunk in response.chunks(5)] == [b"hello"]
    assert conn.reusable


async def test_what_the_framing_does_not_account_for_closes_the_connection() -> None:
    conn, transport = connected()
    head = conn.begin(HttpExchange(), GET)
    conn.data_received(OK_HELLO + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    response = await head
    assert response.violation == "the backend sent a second response to one request"
    assert transport.closing
    assert not conn.reusable
    assert not conn.ended_cleanly


async def test_bytes_before_any_request_fail_the_request_at_once_unsent() -> None:
    conn, transport = connected()
    conn.data_received(b"HTTP/1.1 200 OK\r\n")
    assert transport.closing
    head = conn.begin(HttpExchange(), GET)
    with pytest.raises(UpstreamError, match="outside a response"):
        await head
    assert transport.written == b""


async def test_a_connection_the_backend_closed_is_not_reusable() -> None:
    conn, transport = connected()
    conn.begin(HttpExchange(), GET)
    conn.data_received(OK_HELLO)
    conn.take_body()
    transport.closing = True  # the loop read the backend's FIN
    assert not conn.reusable
    transport.closing = False
    conn.connection_lost(None)  # ...and a callback later, the connection is gone
    assert not conn.reusable


async def read_all(response: UpstreamResponse, into: list[bytes]) -> None:
    async for chunk in response.chunks(5):
        into.append(chunk)


@pytest.mark.parametrize("reset", [False, True])
async def test_a_close_delimited_body_ends_with_the_connection_and_is_cut_by_a_reset(
    reset: bool,
) -> None:
    conn, _ = connected()
    head = conn.begin(HttpExchange(), GET)
    conn.data_received(b"HTTP/1.1 200 OK\r\n\r\nabc")
    response = await head
    conn.connection_lost(ConnectionResetError() if reset else None)
    chunks: list[bytes] = []
    if reset:
        with pytest.raises(UpstreamError, match="mid-body"):
            await read_all(response, chunks)
    else:
        await read_all(response, chunks)
    assert chunks == [b"abc"]
    assert not conn.reusable


async def test_a_connection_closed_before_the_head_fails_the_request() -> None:
    conn, _ = connected()
    head = conn.begin(HttpExchange(), GET)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-")
    conn.connection_lost(None)
    with pytest.raises(UpstreamError, match="closed the connection"):
        await head


async def test_reading_pauses_past_the_high_water_and_resumes_under_half_of_it() -> None:
    conn, transport = connected()
    piece = b"x" * (READ_HIGH_WATER // 4)
    size = len(piece) * 6
    head = conn.begin(HttpExchange(), GET)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
    response = await head
    for _ in range(5):
        conn.data_received(piece)
    assert not transport.reading  # 5/4 of the high water unread
    chunks = response.chunks(5)
    for _ in range(3):
        await anext(chunks)
    assert not transport.reading  # 2/4 left: half
    await anext(chunks)
    assert transport.reading  # 1/4 left: under half
    conn.data_received(piece)
    assert [chunk async for chunk in chunks] == [piece] * 2
    assert conn.reusable


# -- the pool acts on the verdict ---------------------------------------------------------------


class PoolOfFakes(UpstreamPool):
    """The real pool, its connections made on fake transports instead of sockets."""

    def __init__(self, idle_limit: float = 4.0) -> None:
        super().__init__("backend", 80, size=4, connect_timeout=1.0, idle_limit=idle_limit)
        self.made: list[tuple[UpstreamConnection, FakeTransport]] = []

    async def _connect(self) -> UpstreamConnection:
        conn, transport = connected()
        self._open.add(conn)
        self.made.append((conn, transport))
        return conn


async def exchanged(pool: UpstreamPool, answer: bytes) -> UpstreamConnection:
    conn = await pool.acquire(1)
    conn.begin(HttpExchange(), GET)
    conn.data_received(answer)
    conn.take_body()
    pool.release(conn)
    return conn


async def test_a_clean_exchange_is_pooled_and_handed_out_again() -> None:
    pool = PoolOfFakes()
    first = await exchanged(pool, OK_HELLO)
    again = await pool.acquire(1)
    assert again is first
    assert again.reused
    await pool.close()


async def test_a_clean_5xx_is_retired_left_for_the_backend_to_close() -> None:
    pool = PoolOfFakes()
    failed = await exchanged(pool, b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
    (_, transport), *_ = pool.made
    assert not transport.closing  # left open: the TIME_WAIT is to be the backend's
    fresh = await pool.acquire(1)
    assert fresh is not failed
    assert pool.open_connections == 2
    failed.connection_lost(None)  # the backend closes it
    assert pool.open_connections == 1
    await pool.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 500 Oops\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        OK_HELLO + b"X",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello",
    ],
    ids=["close", "5xx and close", "extra bytes", "incomplete"],
)
async def test_anything_else_is_closed_at_once(answer: bytes) -> None:
    pool = PoolOfFakes()
    await exchanged(pool, answer)
    (_, transport), *_ = pool.made
    assert transport.closing
    assert pool.open_connections == 0
    await pool.close()


async def test_an_idle_connection_past_the_idle_limit_is_retired_not_handed_out() -> None:
    pool = PoolOfFakes(idle_limit=0.0)
    idle = await exchanged(pool, OK_HELLO)
    fresh = await pool.acquire(1)
    assert fresh is not idle
    (_, transport), *_ = pool.made
    assert not transport.closing  # retired: its close is the backend's keep-alive timer's
    await pool.close()


async def test_an_idle_connection_the_backend_sent_bytes_on_is_closed_not_handed_out() -> None:
    pool = PoolOfFakes()
    idle = await exchanged(pool, OK_HELLO)
    idle.data_received(b"HTTP/1.1 200 OK\r\n")
    fresh = await pool.acquire(1)
    assert fresh is not idle
    (_, transport), *_ = pool.made
    assert transport.closing
    await pool.close()
