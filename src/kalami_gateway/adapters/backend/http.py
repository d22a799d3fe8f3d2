"""The Kalami FastAPI backend over HTTP, with one shared httpx.AsyncClient.

Traced (``tracing`` given), every call is a client span, child of whatever span is current
(a session's, a turn's), and carries its traceparent: the backend's spans join the trace."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from http.cookiejar import DefaultCookiePolicy
from typing import Final, TypeVar

import aiohttp
import httpx
import msgspec
from httpx_aiohttp import AiohttpTransport
from opentelemetry.trace import Status, StatusCode

from kalami_gateway.adapters.backend.deadlines import BackendDeadlines
from kalami_gateway.adapters.backend.replies import read_turn_reply
from kalami_gateway.adapters.tracing import OtelTracing, traceparent_of
from kalami_gateway.domain.ports import (
    Backend,
    BackendError,
    BackendErrorKind,
    BackendHealth,
    CreatedSession,
    TurnReply,
    Utterance,
    UtteranceUpload,
)
from kalami_gateway.domain.protocol import AudioFormat

AUDIO_CONTENT_TYPES: Final = {
    "webm": "audio/webm",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "m4a": "audio/mp4",
    "ogg": "audio/ogg",
}
T = TypeVar("T")


class _SessionBody(msgspec.Struct):
    id: str | int
    topic: str | None = None


class _ErrorBody(msgspec.Struct):
    detail: object = None


_session_decoder: Final = msgspec.json.Decoder(_SessionBody)
_error_decoder: Final = msgspec.json.Decoder(_ErrorBody)


MAX_BACKEND_CONNECTIONS: Final = 200


def build_client(base_url: str, timeout_seconds: float) -> httpx.AsyncClient:
    """The one client every backend call shares: the httpx API on aiohttp's connection pool;
    its own deadlines are made from ``timeout_seconds``, BACKEND_TIMEOUT (``BackendDeadlines``).

    httpx's own pool (httpcore) walks its connections on every request: 250 turns at once
    against an instant backend cost 1.6 s of CPU cold and 4.0 s warm; through the
    httpx-aiohttp transport the same 250 cost 0.07 s (httpx2: 0.23/0.32 s), measured in
    bench/README.md. No cookie is ever kept: calls act for many learners, and a cookie one
    learner's call received must never ride along on another's.
    """
    session = aiohttp.ClientSession(
        # One connection per call, closed by the backend after its answer (its TIME_WAIT,
        # not the gateway's ports): a pooled one can be closed by the backend under the next
        # call. Starlette answers a route's unhandled exception with a 500 that keeps the
        # connection alive and uvicorn closes it a moment later, so the next call on it —
        # another learner's turn — died unsent or half-sent (50 of 50 right after a 500;
        # aiohttp releases a small answer's connection before any hook could stop it). These
        # calls are session starts, ends and turns, each seconds of backend work: a connect
        # more is nothing beside that.
        connector=aiohttp.TCPConnector(limit=MAX_BACKEND_CONNECTIONS, force_close=True),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    transport = AiohttpTransport(client=session)
    # Only connecting is bounded here. The deadline of a whole call is the caller's (the
    # application service): a create that answers after its deadline must still be heard, so
    # that the session it made can be ended.
    deadlines = BackendDeadlines.from_backend_timeout(timeout_seconds)
    client = httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(
            connect=deadlines.connect,
            pool=deadlines.pool,
            read=deadlines.read,
            write=deadlines.write,
        ),
        transport=transport,
        headers={"User-Agent": "kalami-gateway"},
    )
    client.cookies.jar.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    return client


class HttpxBackend(Backend):
    """Calls the backend as the learner: every call carries the client's own bearer token."""

    def __init__(self, client: httpx.AsyncClient, tracing: OtelTracing | None = None) -> None:
        self._client = client
        self._tracing = tracing

    async def create_session(
        self, token: str, profile_id: str, topic: str | None
    ) -> CreatedSession:
        response = await self._send(
            "POST",
            "/conversations/sessions",
            token,
            json={"profile_id": profile_id, "topic": topic},
        )
        body = _decode(_session_decoder, response)
        return CreatedSession(
            id=str(body.id), topic=body.topic if body.topic is not None else topic
        )

    async def end_session(self, token: str, session_id: str) -> None:
        await self._send("POST", f"/conversations/sessions/{session_id}/end", token)

    async def submit_utterance(
        self, token: str, session_id: str, utterance: Utterance
    ) -> TurnReply:
        form = _AudioForm(utterance.audio_format)
        # The utterance's chunks go out in arrival order, with their length (never chunked:
        # that is what this mode is for), without being joined into one more copy.
        size = len(form.head) + utterance.size + len(form.tail)
        response = await self._send(
            "POST",
            _audio_path(session_id),
            token,
            content=_pieces(form, utterance.chunks),
            headers={**form.headers, "Content-Length": str(size)},
        )
        return _turn_reply(response)

    def open_upload(
        self, token: str, session_id: str, audio_format: AudioFormat
    ) -> UtteranceUpload:
        return _StreamedUpload(self, token, session_id, audio_format)

    async def health(self) -> BackendHealth:
        try:
            # The readiness probe bounds this call (the lower of 5 s and BACKEND_TIMEOUT) for
            # every backend adapter.
            response = await self._client.get("/health")
        except httpx.HTTPError:
            return BackendHealth.UNREACHABLE
        return BackendHealth.HEALTHY if response.is_success else BackendHealth.UNHEALTHY

    async def _send(
        self,
        method: str,
        path: str,
        token: str,
        *,
        json: object = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
        if self._tracing is not None:
            return await self._traced(method, path, json, content, all_headers, self._tracing)
        return await self._call(method, path, json, content, all_headers)

    async def _traced(
        self,
        method: str,
        path: str,
        json: object,
        content: bytes | AsyncIterator[bytes] | None,
        headers: dict[str, str],
        tracing: OtelTracing,
    ) -> httpx.Response:
        span = tracing.client_span(
            f"backend {method}", {"http.request.method": method, "url.path": path}
        )
        headers["traceparent"] = traceparent_of(span).decode()
        try:
            response = await self._call(method, path, json, content, headers)
        except BackendError as exc:
            if exc.status is not None:
                span.set_attribute("http.response.status_code", exc.status)
            span.set_status(Status(StatusCode.ERROR, exc.kind.value))
            raise
        except BaseException as exc:  # cancelled (a deadline, the client leaving)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        else:
            span.set_attribute("http.response.status_code", response.status_code)
            return response
        finally:
            span.end()

    async def _call(
        self,
        method: str,
        path: str,
        json: object,
        content: bytes | AsyncIterator[bytes] | None,
        all_headers: dict[str, str],
    ) -> httpx.Response:
        try:
            response = await self._client.request(
                method, path, json=json, content=content, headers=all_headers
            )
        except httpx.HTTPError as exc:
            if _timed_out(exc):
                raise BackendError(BackendErrorKind.TIMEOUT, "the backend timed out.") from None
            raise BackendError(
                BackendErrorKind.UNREACHABLE, "the backend is unavailable."
            ) from None
        if not response.is_success:
            raise BackendError(
                BackendErrorKind.REJECTED,
                _rejection_detail(response),
                status=response.status_code,
            )
        return response


# At most this much audio of one recording waits in the gateway for the backend to read it.
UPLOAD_WINDOW_BYTES: Final = 256 * 1024


def _audio_path(session_id: str) -> str:
    return f"/conversations/sessions/{session_id}/audio"


class _AudioForm:
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


# A buffered utterance is written this much at a time (one frame may be a whole recording).
WRITE_PIECE_BYTES: Final = 256 * 1024


async def _pieces(form: _AudioForm, chunks: Sequence[bytes]) -> AsyncIterator[bytes]:
    yield form.head
    for chunk in chunks:
        if len(chunk) <= WRITE_PIECE_BYTES:
            yield chunk
            continue
        view = memoryview(chunk)
        for start in range(0, len(chunk), WRITE_PIECE_BYTES):
            yield bytes(view[start : start + WRITE_PIECE_BYTES])
    yield form.tail


class _StreamedUpload(UtteranceUpload):
    """A chunked upload fed frame by frame: the request runs as a task whose body generator
    takes frames from a queue of at most UPLOAD_WINDOW_BYTES (one larger frame on its own).
    aiohttp asks for the next chunk only once the last one is written to the socket, so a
    backend that reads slowly holds the queue full, and ``write`` waits: the client's socket
    is not read meanwhile (TCP pushes back on the learner's phone, nothing piles up here)."""

    def __init__(
        self, backend: HttpxBackend, token: str, session_id: str, audio_format: AudioFormat
    ) -> None:
        form = _AudioForm(audio_format)
        self._form = form
        self._queue: collections.deque[bytes | None] = collections.deque()  # None: the end
        self._queued = 0
        self._readable = asyncio.Event()  # the body may take something
        self._room = asyncio.Event()  # write may add something
        self._room.set()
        self._aborted = False
        self._task = asyncio.ensure_future(
            backend._send(
                "POST", _audio_path(session_id), token, content=self._body(), headers=form.headers
            )
        )
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
        self._queue.append(None)
        self._readable.set()
        return _turn_reply(await self._task)

    def abort(self) -> None:
        self._aborted = True
        self._task.cancel()

    async def _body(self) -> AsyncIterator[bytes]:
        yield self._form.head
        while True:
            while not self._queue:
                self._readable.clear()
                await self._readable.wait()
            chunk = self._queue.popleft()
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
        self._room.set()  # a writer waiting for room learns of it at once
        if not task.cancelled():
            task.exception()  # retrieved here: a failure is reported by write or finish


def _turn_reply(response: httpx.Response) -> TurnReply:
    return read_turn_reply(response.content, response.status_code)


def _timed_out(exc: httpx.HTTPError) -> bool:
    """A timeout, not a refusal. The aiohttp transport reports a refused connection as
    ``ConnectTimeout`` (its exception map prefers the broader class), so the cause decides."""
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ServerTimeoutError | TimeoutError):
        return True
    if isinstance(cause, aiohttp.ClientError):
        return False
    return isinstance(exc, httpx.TimeoutException)


def _decode(decoder: msgspec.json.Decoder[T], response: httpx.Response) -> T:
    try:
        return decoder.decode(response.content)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BackendError(
            BackendErrorKind.INVALID_REPLY,
            "the backend sent a reply the gateway could not read.",
            status=response.status_code,
        ) from exc


def _rejection_detail(response: httpx.Response) -> str:
    detail: object = None
    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
        detail = _error_decoder.decode(response.content).detail
    if isinstance(detail, str) and detail:
        return f"the backend answered {response.status_code} ({detail})."
    return f"the backend answered {response.status_code}."
