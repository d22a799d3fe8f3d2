"""Streamed utterances corked (adapters/backend/corking.py): the socket a streamed upload's
call opens holds its bytes until the upload's end, every other call's socket is as before,
and the end uncorks, whenever it comes. Real sockets, never connected: the kernel keeps the
option, and that is what is asserted."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import httpx

from kalami_gateway.adapters.backend.corking import TCP_CORK, Cork, backend_socket
from kalami_gateway.adapters.backend.uploads import StreamedUpload

ADDR_INFO = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", 9))
REPLY = b'{"user_text": "hola", "assistant_text": "hola", "corrections": []}'


def corked(sock: socket.socket) -> bool:
    assert TCP_CORK is not None  # Linux, where the gateway runs
    return sock.getsockopt(socket.IPPROTO_TCP, TCP_CORK) != 0


async def opened() -> socket.socket:
    """What aiohttp does in the call's task when it connects."""
    return backend_socket(ADDR_INFO)


async def test_a_socket_opened_outside_an_upload_is_not_corked() -> None:
    with backend_socket(ADDR_INFO) as sock:
        assert not corked(sock)


async def test_a_socket_an_uploads_call_opens_is_corked_until_released() -> None:
    cork = Cork()
    sock = await cork.start(opened())
    with sock:
        assert corked(sock)
        assert cork.corked == (sock,)
        cork.release()
        assert not corked(sock)
        assert not cork.corked
        cork.release()  # twice: nothing more to do
    cork.release()


async def test_a_socket_opened_after_the_release_is_not_corked() -> None:
    # An upload that ends before its call has connected: the end must not wait on a cork
    # nobody will take off.
    cork = Cork()
    go = asyncio.Event()

    async def connects_late() -> socket.socket:
        await go.wait()
        return backend_socket(ADDR_INFO)

    call = cork.start(connects_late())
    cork.release()
    go.set()
    with await call as sock:
        assert not corked(sock)


async def test_releasing_a_closed_socket_is_harmless() -> None:
    cork = Cork()
    sock = await cork.start(opened())
    sock.close()
    cork.release()
    assert not cork.corked


async def test_the_context_does_not_leak_past_the_start() -> None:
    cork = Cork()
    with await cork.start(opened()), backend_socket(ADDR_INFO) as later:
        assert not corked(later)
        cork.release()


class CorkedBackend:
    """Reads the body as aiohttp does, through a socket opened as aiohttp opens one, and
    records whether that socket was corked when each chunk came."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.corked_at: list[tuple[bytes, bool]] = []

    def request(
        self, body: AsyncIterator[bytes], headers: dict[str, str]
    ) -> Coroutine[Any, Any, httpx.Response]:
        async def read() -> httpx.Response:
            self.sock = backend_socket(ADDR_INFO)
            async for chunk in body:
                self.corked_at.append((chunk, corked(self.sock)))
            return httpx.Response(200, content=REPLY)

        return read()


async def test_a_streamed_upload_is_corked_while_it_streams_and_its_end_is_not() -> None:
    backend = CorkedBackend()
    upload = StreamedUpload(backend.request, "wav")
    for n in range(3):
        await upload.write(bytes([n]) * 4096)
        await asyncio.sleep(0)
    await asyncio.wait_for(upload.finish(), 5)
    assert backend.sock is not None
    with backend.sock:
        *streamed, (tail, tail_corked) = backend.corked_at
        assert len(streamed) == 4  # the form's head and three frames
        assert all(was_corked for _, was_corked in streamed)
        assert tail == upload._form.tail
        assert not tail_corked  # the rest, and the end, go at once
        assert not corked(backend.sock)


async def test_an_aborted_upload_uncorks() -> None:
    backend = CorkedBackend()
    upload = StreamedUpload(backend.request, "wav")
    await upload.write(b"\x01" * 4096)
    for _ in range(5):
        await asyncio.sleep(0)
    assert backend.sock is not None
    with backend.sock:
        assert corked(backend.sock)
        upload.abort()
        assert not corked(backend.sock)
