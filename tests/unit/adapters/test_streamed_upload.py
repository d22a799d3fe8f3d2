"""A streamed utterance's body (adapters/backend/uploads.py): each frame a chunk, nothing
lost, reordered or held back at the end, and the window pushes back. The request is a fake
that reads the body as aiohttp would, one chunk after another."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from kalami_gateway.adapters.backend.uploads import UPLOAD_WINDOW_BYTES, StreamedUpload

REPLY = b'{"user_text": "hola", "assistant_text": "hola, hola", "corrections": []}'


class Backend:
    """Reads the body chunk by chunk, as the HTTP client does, and answers once it ends.
    ``gate``: cleared, it stops reading (a backend slower than the learner)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.gate = asyncio.Event()
        self.gate.set()

    def request(
        self, body: AsyncIterator[bytes], headers: dict[str, str]
    ) -> Coroutine[Any, Any, httpx.Response]:
        async def read() -> httpx.Response:
            async for chunk in body:
                self.chunks.append(chunk)
                await self.gate.wait()
            return httpx.Response(200, content=REPLY)

        return read()

    def audio(self, upload: StreamedUpload) -> bytes:
        """The audio the backend has read so far (the form's head and tail taken off)."""
        data = b"".join(self.chunks)
        form = upload._form
        data = data.removeprefix(form.head)
        return data.removesuffix(form.tail)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_each_frame_is_a_chunk_of_the_body_between_the_forms_head_and_tail() -> None:
    backend = Backend()
    upload = StreamedUpload(backend.request, "wav")
    frames = [bytes([n]) * 4096 for n in range(3)]
    for frame in frames:
        assert upload.offer(frame)
    reply = await asyncio.wait_for(upload.finish(), 5)
    assert reply.user_text == "hola"
    assert backend.chunks == [upload._form.head, *frames, upload._form.tail]


async def test_the_window_still_pushes_back_on_the_writer() -> None:
    backend = Backend()
    backend.gate.clear()  # reads the head, then nothing more
    upload = StreamedUpload(backend.request, "wav")
    await settle()
    frame = b"x" * (UPLOAD_WINDOW_BYTES // 4)
    for _ in range(4):
        assert upload.offer(frame)
    assert not upload.offer(frame)  # the window is full: write waits
    writer = asyncio.ensure_future(upload.write(frame))
    await asyncio.sleep(0.1)
    assert not writer.done()
    backend.gate.set()
    await asyncio.wait_for(writer, 5)
    reply = await asyncio.wait_for(upload.finish(), 5)
    assert reply.user_text == "hola"
    assert backend.audio(upload) == frame * 5


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.binary(min_size=0, max_size=20_000).map(lambda b: ("frame", b)),
            st.sampled_from([("yield", 0.0), ("sleep", 0.001), ("sleep", 0.025)]),
        ),
        max_size=40,
    )
)
def test_the_body_is_every_frame_in_order_however_they_arrive(
    steps: list[tuple[str, Any]],
) -> None:
    async def run() -> None:
        backend = Backend()
        upload = StreamedUpload(backend.request, "wav")
        sent: list[bytes] = []
        for kind, value in steps:
            if kind == "frame":
                await asyncio.wait_for(upload.write(value), 5)
                sent.append(value)
            else:
                await asyncio.sleep(value)
        await asyncio.wait_for(upload.finish(), 5)
        assert backend.audio(upload) == b"".join(sent)
        assert all(backend.chunks), "an empty chunk would end a chunked body"
        assert max(map(len, backend.chunks[1:-1]), default=0) <= max(
            UPLOAD_WINDOW_BYTES, *map(len, sent), 0
        )

    asyncio.run(run())
