"""The /api proxy's budgets (issue 24, row 6): a request body's pace, one client's share of the
upstream pool, and the part of the pool kept for small requests.

The attack run: 520 chunked uploads dripping one byte every 2 s (never a stall of
``BACKEND_TIMEOUT``) held all 512 upstream connections, and every other client's ``/api``
request got 503. Here at a small scale: a pool of a few connections, a stall deadline of 1 s
and a byte every 0.1-0.2 s. Other client addresses are real: the gateway listens on 127.0.0.1
and a client socket bound to 127.0.0.2 reaches it from there (Linux routes all of 127/8 to
loopback); many addresses come through a trusted proxy's X-Forwarded-For.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from kalami_gateway.adapters.proxy.deadlines import BodyPace
from kalami_gateway.adapters.proxy.relay import streamed_share
from tests.integration.conftest import Gateway, eventually
from tests.integration.raw_backend import RawBackend
from tests.integration.raw_client import RawResponse, read_response
from tests.integration.test_proxy_attacks import (
    chunk,
    chunked_upload,
    content_length_upload,
    gateway_on,
    record_of,
)

ANOTHER_ADDRESS = "127.0.0.2"
TOO_MANY = {"error": "Backend busy: too many requests from this client", "code": "backend_busy"}
NO_CONNECTION = {"error": "Backend busy: no connection free", "code": "backend_busy"}
TIMED_OUT = {"error": "Request body timed out", "code": "request_timeout"}


class Upload:
    """A POST whose body the client sends ``piece`` by ``piece``, one every ``every`` seconds
    (well within the stall deadline), until told to finish; its answer is read as it comes."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        size: int | None,
        piece: bytes,
        every: float,
    ) -> None:
        self.writer = writer
        self._size = size
        self._sent = 0
        self._piece = piece
        self._every = every
        self._drip = asyncio.create_task(self._send())
        self.answer = asyncio.create_task(read_response(reader, "POST", within=30))
        self.reader = reader

    @classmethod
    async def start(
        cls,
        gw: Gateway,
        tag: str,
        *,
        size: int | None = None,
        piece: bytes = b"d",
        every: float = 0.2,
        forwarded_for: str | None = None,
        source: str | None = None,
    ) -> Upload:
        """``size``: a Content-Length body of that many bytes; None: chunked."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", gw.port, local_addr=(source, 0) if source else None
        )
        path = f"/api/ok/{tag}"
        head = chunked_upload(path, tag) if size is None else content_length_upload(path, tag, size)
        if forwarded_for is not None:
            head = head[:-2] + f"x-forwarded-for: {forwarded_for}\r\n\r\n".encode()
        writer.write(head)
        await writer.drain()
        return cls(reader, writer, size, piece, every)

    async def _send(self) -> None:
        piece = chunk(self._piece) if self._size is None else self._piece
        with contextlib.suppress(ConnectionError):
            while not self.writer.is_closing():
                self.writer.write(piece)
                self._sent += len(self._piece)
                await self.writer.drain()
                await asyncio.sleep(self._every)

    async def finish(self) -> RawResponse:
        """Stop dripping, send the rest of the body at once, and wait for the answer."""
        await self.stop_dripping()
        if self._size is None:
            self.writer.write(b"0\r\n\r\n")
        else:
            self.writer.write(b"f" * (self._size - self._sent))
        await self.writer.drain()
        return await self.answer

    def answered(self) -> bool:
        return self.answer.done()

    async def stop_dripping(self) -> None:
        self._drip.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._drip

    async def close(self) -> None:
        await self.stop_dripping()
        self.answer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.answer
        self.writer.close()


@asynccontextmanager
async def uploads() -> AsyncIterator[list[Upload]]:
    """The uploads a test starts, all stopped and closed at its end."""
    started: list[Upload] = []
    try:
        yield started
    finally:
        for upload in started:
            await upload.close()


async def hung_up(upload: Upload) -> bool:
    """The gateway closed the connection (a reset, if the client was still sending)."""
    await upload.stop_dripping()
    try:
        return await asyncio.wait_for(upload.reader.read(), 5) == b""
    except ConnectionResetError:
        return True


def error_of(response: RawResponse | httpx.Response) -> tuple[int, Any]:
    """The status and the JSON body (the raw text if it is not JSON: a backend's answer)."""
    if isinstance(response, httpx.Response):
        status, body = response.status_code, response.content
    else:
        status, body = response.status, response.body
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode("latin-1")


def client_from(source: str | None = None) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=source) if source else None
    return httpx.AsyncClient(timeout=10, transport=transport)


async def get_and_post(
    gw: Gateway, tag: str, source: str | None = None, forwarded_for: str | None = None
) -> None:
    """A bodiless and a small request, both answered 200, each with its own answer."""
    headers = {} if forwarded_for is None else {"x-forwarded-for": forwarded_for}
    async with client_from(source) as client:
        got = await client.get(
            f"{gw.http}/api/ok/{tag}-get", headers={"x-tag": f"{tag}-get", **headers}
        )
        posted = await client.post(
            f"{gw.http}/api/ok/{tag}-post",
            content=b"p" * 1024,
            headers={"x-tag": f"{tag}-post", **headers},
        )
    assert (got.status_code, got.text) == (200, f"tag={tag}-get")
    assert (posted.status_code, posted.text) == (200, f"tag={tag}-post")


# -- row 6, reduced: dripping uploads from one address leave the pool to everyone else --------


async def test_dripping_uploads_from_one_address_leave_the_pool_to_other_clients(
    raw: RawBackend,
) -> None:
    async with (
        gateway_on(raw, pool_size=8, api_connections_per_client=4) as gw,
        uploads() as attack,
        uploads() as victims,
    ):
        for n in range(10):  # more than the pool, as in the attack run
            attack.append(await Upload.start(gw, f"drip-{n}"))
        await eventually(lambda: len(raw.connections) >= 4)

        await get_and_post(gw, "victim", source=ANOTHER_ADDRESS)
        # And an upload of its own (streamed: the attacker's 4 leave 2 of the streamed share).
        upload = await Upload.start(gw, "victim-upload", piece=b"v" * 1024, source=ANOTHER_ADDRESS)
        victims.append(upload)
        assert (await upload.finish()).body == b"tag=victim-upload"

        await eventually(lambda: sum(a.answered() for a in attack) >= 6)
        refused = [a for a in attack if a.answered()]
        admitted = [a for a in attack if not a.answered()]
        assert len(refused) == 6
        for upload in refused:
            assert error_of(upload.answer.result()) == (503, TOO_MANY)
        for upload in admitted:  # undisturbed: their bodies go through when they finish
            finished = await upload.finish()
            assert finished.status == 200
    tags = [r.tag for r in raw.requests]
    assert sorted(t for t in tags if not t.startswith("drip-")) == [
        "victim-get",
        "victim-post",
        "victim-upload",
    ]
    assert len([t for t in tags if t.startswith("drip-")]) == 4


# -- the pace of a request body ----------------------------------------------------------------


@pytest.mark.parametrize("framing", ["chunked", "content-length", "small"])
async def test_a_body_slower_than_the_minimum_rate_gets_408_and_its_exchange_is_aborted(
    raw: RawBackend, framing: str
) -> None:
    size = {"chunked": None, "content-length": 500_000, "small": 100_000}[framing]
    async with (
        gateway_on(raw, pool_size=2, api_body_min_rate=1024, api_body_rate_grace_ms=300) as gw,
        uploads() as started,
    ):
        # A byte every 0.1 s: never a stall of the 1 s deadline, but ~10 bytes/s.
        slow = await Upload.start(gw, "slow", size=size, every=0.1)
        # 1 KiB every 0.1 s: ten times the minimum, and it finishes.
        paced = await Upload.start(gw, "paced", piece=b"k" * 1024, every=0.1)
        started += [slow, paced]

        timed_out = await asyncio.wait_for(asyncio.shield(slow.answer), 5)
        assert error_of(timed_out) == (408, TIMED_OUT)
        assert timed_out.header("connection") == "close"
        assert await hung_up(slow)

        await asyncio.sleep(0.6)  # the paced upload runs past the grace
        finished = await paced.finish()
        assert (finished.status, finished.body) == (200, b"tag=paced")
        await get_and_post(gw, "after")
        if size is None or size > 256 * 1024:
            # The streamed body's upstream connection was closed, never pooled again.
            await eventually(lambda: record_of(raw, "slow").closed_by_gateway)
            assert [r.tag for r in record_of(raw, "slow").requests] == ["slow"]
    assert not any(r.complete for r in raw.requests if r.tag == "slow")
    if size is not None and size <= 256 * 1024:
        assert "slow" not in [r.tag for r in raw.requests]  # read whole first: never forwarded


# -- one client's share of the pool ------------------------------------------------------------


@pytest.mark.parametrize("trusted", [False, True], ids=["peer", "behind-a-trusted-proxy"])
async def test_one_client_holds_at_most_its_share_of_concurrent_requests(
    raw: RawBackend, trusted: bool
) -> None:
    proxies = ("127.0.0.1",) if trusted else ()
    async with (
        gateway_on(raw, pool_size=8, api_connections_per_client=2, trusted_proxies=proxies) as gw,
        uploads() as held,
        client_from() as client,
    ):
        # Two requests in flight from 10.0.0.1 (seen through the proxy) or from 127.0.0.1.
        held.append(await Upload.start(gw, "held-0", forwarded_for="10.0.0.1"))
        held.append(await Upload.start(gw, "held-1", size=500_000, forwarded_for="10.0.0.1"))
        await eventually(lambda: len(raw.connections) == 2)

        # The same client once more (a forged address in front of the proxy's changes nothing).
        for forwarded_for in ("10.0.0.1", "10.0.0.9, 10.0.0.1", "10.0.0.1, 127.0.0.1"):
            over = await client.get(
                f"{gw.http}/api/ok/over", headers={"x-forwarded-for": forwarded_for}
            )
            assert error_of(over) == (503, TOO_MANY)
        # Another client: its own share.
        if trusted:
            await get_and_post(gw, "other", forwarded_for="10.0.0.2")
        else:
            # Claims from an untrusted peer are not believed: still the same client.
            other = await client.get(
                f"{gw.http}/api/ok/other", headers={"x-forwarded-for": "10.0.0.2"}
            )
            assert error_of(other) == (503, TOO_MANY)
            await get_and_post(gw, "other", source=ANOTHER_ADDRESS)

        for upload in held:
            assert (await upload.finish()).status == 200
        # Its requests over, the client has its whole share again.
        await get_and_post(gw, "again", forwarded_for="10.0.0.1")
    assert "over" not in [r.tag for r in raw.requests]


# -- the part of the pool kept for small requests ----------------------------------------------


async def test_streamed_uploads_leave_a_quarter_of_the_pool_to_small_requests(
    raw: RawBackend,
) -> None:
    pool = 4
    assert streamed_share(pool) == 3
    async with (
        gateway_on(raw, pool_size=pool, trusted_proxies=("127.0.0.1",)) as gw,
        uploads() as streams,
    ):
        # Three clients' streamed uploads (chunked, and over 256 KiB) fill the streamed share.
        for n, size in enumerate((None, 500_000, None)):
            streams.append(
                await Upload.start(gw, f"stream-{n}", size=size, forwarded_for=f"10.0.0.{n + 1}")
            )
        await eventually(lambda: len(raw.connections) == 3)
        # A fourth waits for the share, not for the last connection...
        fourth = await Upload.start(gw, "stream-3", forwarded_for="10.0.0.4")
        streams.append(fourth)
        # ...which bodiless and small requests still get.
        await get_and_post(gw, "small", forwarded_for="10.0.0.5")
        assert error_of(await fourth.answer) == (503, NO_CONNECTION)  # after the 1 s wait
        for upload in streams[:3]:
            assert (await upload.finish()).status == 200
    assert "stream-3" not in [r.tag for r in raw.requests]


# -- the rules, alone --------------------------------------------------------------------------


def test_a_body_may_fall_behind_the_minimum_rate_by_the_grace_only() -> None:
    pace = BodyPace(stall=30.0, min_rate=1000, grace=10.0, start=100.0)
    assert pace.deadline(100.0) == 110.0  # nothing yet: the grace
    pace.received(5000)  # 5 s worth
    assert pace.deadline(101.0) == pytest.approx(115.0)
    assert pace.deadline(90.0) == pytest.approx(115.0)
    pace.paused(2.0)  # the backend did not take the body for 2 s: not the client's time
    assert pace.deadline(101.0) == pytest.approx(117.0)
    assert not pace.behind(116.9)
    assert pace.behind(117.1)
    assert BodyPace(stall=3.0, min_rate=1000, grace=10.0, start=0.0).deadline(5.0) == 8.0


def test_without_a_minimum_rate_only_the_stall_deadline_counts() -> None:
    pace = BodyPace(stall=3.0, min_rate=0, grace=10.0, start=0.0)
    pace.received(1)
    assert pace.deadline(1000.0) == 1003.0
    assert not pace.behind(1_000_000.0)
