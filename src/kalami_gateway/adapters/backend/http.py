"""The Kalami FastAPI backend over HTTP, with one shared httpx.AsyncClient.

Traced (``tracing`` given), every call is a client span, child of whatever span is current
(a session's, a turn's), and carries its traceparent: the backend's spans join the trace."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from http.cookiejar import DefaultCookiePolicy
from typing import Any, Final, TypeVar

import aiohttp
import httpx
import msgspec
from httpx_aiohttp import AiohttpTransport
from opentelemetry.trace import Status, StatusCode

from kalami_gateway.adapters.backend.corking import backend_socket
from kalami_gateway.adapters.backend.deadlines import BackendDeadlines
from kalami_gateway.adapters.backend.replies import read_turn_reply
from kalami_gateway.adapters.backend.uploads import (
    AudioForm,
    StreamedUpload,
    audio_path,
    pieces,
)
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

T = TypeVar("T")


class _SessionBody(msgspec.Struct):
    id: str | int
    topic: str | None = None


class _ErrorBody(msgspec.Struct):
    detail: object = None


_session_decoder: Final = msgspec.json.Decoder(_SessionBody)
_error_decoder: Final = msgspec.json.Decoder(_ErrorBody)


MAX_BACKEND_CONNECTIONS: Final = 200


def build_client(
    base_url: str,
    timeout_seconds: float,
    socket_factory: Callable[[tuple[Any, ...]], socket.socket] = backend_socket,
) -> httpx.AsyncClient:
    """The one client every backend call shares: the httpx API on aiohttp's connection pool;
    its own deadlines are made from ``timeout_seconds``, BACKEND_TIMEOUT (``BackendDeadlines``).

    httpx's own pool (httpcore) walks its connections on every request: 250 turns at once
    against an instant backend cost 1.6 s of CPU cold and 4.0 s warm; through the
    httpx-aiohttp transport the same 250 cost 0.07 s (httpx2: 0.23/0.32 s), measured in
    bench/README.md. No cookie is ever kept: calls act for many learners, and a cookie one
    learner's call received must never ride along on another's. ``socket_factory`` makes
    the sockets (``backend_socket``: a streamed upload's corked, ``corking``).
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
        connector=aiohttp.TCPConnector(
            limit=MAX_BACKEND_CONNECTIONS, force_close=True, socket_factory=socket_factory
        ),
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
        form = AudioForm(utterance.audio_format)
        # The utterance's chunks go out in arrival order, with their length (never chunked:
        # that is what this mode is for), without being joined into one more copy.
        size = len(form.head) + utterance.size + len(form.tail)
        response = await self._send(
            "POST",
            audio_path(session_id),
            token,
            content=pieces(form, utterance.chunks),
            headers={**form.headers, "Content-Length": str(size)},
        )
        return _turn_reply(response)

    def open_upload(
        self, token: str, session_id: str, audio_format: AudioFormat
    ) -> UtteranceUpload:
        path = audio_path(session_id)

        def request(
            body: AsyncIterator[bytes], headers: dict[str, str]
        ) -> Coroutine[Any, Any, httpx.Response]:
            return self._send("POST", path, token, content=body, headers=headers)

        return StreamedUpload(request, audio_format)

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
