"""An utterance's body on its way to the backend: its ``multipart/form-data`` framing
(``AudioForm``), the buffered body written in pieces (``pieces``), and the streamed one fed
frame by frame while the learner speaks (``StreamedUpload``)."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, Final

import httpx

from kalami_gateway.adapters.backend.corking import Cork
from kalami_gateway.adapters.backend.replies import read_turn_reply
from kalami_gateway.domain.ports import BackendError, BackendErrorKind, TurnReply
from kalami_gateway.domain.protocol import AudioFormat

AUDIO_CONTENT_TYPES: Final = {
    "webm": "audio/webm",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "m4a": "audio/mp4",
    "ogg": "audio/ogg",
}

# At most this much audio of one recording waits in the gateway for the backend to read it.
UPLOAD_WINDOW_BYTES: Final = 256 * 1024
# A buffered utterance is written this much at a time (one frame may be a whole recording).
WRITE_PIECE_BYTES: Final = 256 * 1024


def audio_path(session_id: str) -> str:
    return f"/conversations/sessions/{session_id}/audio"


class AudioForm:
    """The multipart/form-data framing of an utterance: part ``audio``, ``recording.<fmt>``."""

    __slots__ = ("head", "headers", "tail")

    def __init__(self, audio_format: AudioFormat) -> None:
        boundary = uuid.uuid4().hex
        self.head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="audio"; filename="recording.{audio_format}"'
            f"\r\nContent-Type: {AUDIO_CONTENT_TYPES[audio_format]}\r\n\r\n"
        ).encode()
        self.tail = f"\r\n--{boundary}--\r\n".encode()
        self.headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}


async def pieces(form: AudioForm, chunks: Sequence[bytes]) -> AsyncIterator[bytes]:
    """A buffered utterance's body: its chunks in arrival order, none larger than
    WRITE_PIECE_BYTES, without joining them into one more copy."""
    yield form.head
    for chunk in chunks:
        if len(chunk) <= WRITE_PIECE_BYTES:
            yield chunk
            continue
        view = memoryview(chunk)
        for start in range(0, len(chunk), WRITE_PIECE_BYTES):
            yield bytes(view[start : start + WRITE_PIECE_BYTES])
    yield form.tail


Request = Callable[[AsyncIterator[bytes], dict[str, str]], Coroutine[Any, Any, httpx.Response]]


class StreamedUpload:
    """A chunked upload fed frame by frame (the domain's ``UtteranceUpload``): the request
    runs as a task whose body generator takes frames from a queue of at most
    UPLOAD_WINDOW_BYTES (one larger frame on its own), each frame a chunk of the body.
    aiohttp asks for the next chunk only once the last one is written to the socket, so a
    backend that reads slowly holds the queue full, and ``write`` waits: the client's socket
    is not read meanwhile (TCP pushes back on the learner's phone, nothing piles up here).

    Frames are not joined into larger chunks: that saved a send a frame (~25 % more audio
    through on the bench) but 200 uploads at once then took 140-170 MB instead of 72
    (bench/README.md, "Streamed utterances"). The kernel joins them instead: the call's
    socket is corked (``corking``) until the body's end.

    ``request(body, headers)``: the backend call that sends the body (``HttpxBackend``'s)."""

    def __init__(self, request: Request, audio_format: AudioFormat) -> None:
        form = AudioForm(audio_format)
        self._form = form
        self._queue: collections.deque[bytes | None] = collections.deque()  # None: the end
        self._queued = 0
        self._readable = asyncio.Event()  # the body may take something
        self._room = asyncio.Event()  # write may add something
        self._room.set()
        self._aborted = False
        self._cork = Cork()
        self._task = self._cork.start(request(self._body(), form.headers))
        self._task.add_done_callback(self._request_done)

    def offer(self, chunk: bytes) -> bool:
        self._failed_early()
        if self._queued and self._queued + len(chunk) > UPLOAD_WINDOW_BYTES:
            return False
        if chunk:  # an empty frame adds nothing (and an empty chunk would end the body)
            self._queue.append(chunk)
            self._queued += len(chunk)
            self._readable.set()
        return True

    async def write(self, chunk: bytes) -> None:
        while not self.offer(chunk):
            self._room.clear()
            await self._room.wait()

    async def finish(self) -> TurnReply:
        if self._aborted:
            raise BackendError(BackendErrorKind.UNREACHABLE, "the upload was aborted.")
        self._cork.release()  # the rest of the body, and its end, go at once
        self._queue.append(None)
        self._readable.set()
        response = await self._task
        return read_turn_reply(response.content, response.status_code)

    def abort(self) -> None:
        self._aborted = True
        self._cork.release()
        self._task.cancel()

    async def _body(self) -> AsyncIterator[bytes]:
        yield self._form.head
        queue = self._queue
        while True:
            while not queue:
                self._readable.clear()
                await self._readable.wait()
            chunk = queue.popleft()
            if chunk is None:
                break
            self._queued -= len(chunk)
            self._room.set()
            yield chunk
        yield self._form.tail

    def _failed_early(self) -> None:
        """The request ended before its body did: the backend failed or answered early."""
        if self._aborted or (self._task.done() and self._task.cancelled()):
            raise BackendError(BackendErrorKind.UNREACHABLE, "the upload was aborted.")
        if not self._task.done():
            return
        exc = self._task.exception()
        if exc is not None:
            raise exc
        status = self._task.result().status_code
        raise BackendError(
            BackendErrorKind.REJECTED,
            f"the backend answered {status} before the utterance was complete.",
            status=status,
        )

    def _request_done(self, task: asyncio.Future[httpx.Response]) -> None:
        self._cork.release()
        self._room.set()  # a writer waiting for room learns of it at once
        if not task.cancelled():
            task.exception()  # retrieved here: a failure is reported by write or finish
