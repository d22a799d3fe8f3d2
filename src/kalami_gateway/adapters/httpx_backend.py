"""The Kalami FastAPI backend over HTTP, with one shared httpx.AsyncClient."""

from __future__ import annotations

import contextlib
import uuid
from http.cookiejar import DefaultCookiePolicy
from typing import Final, TypeVar

import aiohttp
import httpx
import msgspec
from httpx_aiohttp import AiohttpTransport

from kalami_gateway.domain.ports import (
    Backend,
    BackendError,
    BackendErrorKind,
    BackendHealth,
    CreatedSession,
    TurnReply,
    Utterance,
)
from kalami_gateway.domain.protocol import GrammarCorrection

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


class _Correction(msgspec.Struct):
    original: str
    corrected: str
    explanation: str = ""


class _TurnBody(msgspec.Struct):
    user_text: str
    assistant_text: str
    assistant_audio_base64: str | None = None
    corrections: list[_Correction] | None = None
    vocabulary_introduced: list[str] | None = None


class _ErrorBody(msgspec.Struct):
    detail: object = None


_session_decoder: Final = msgspec.json.Decoder(_SessionBody)
_turn_decoder: Final = msgspec.json.Decoder(_TurnBody)
_error_decoder: Final = msgspec.json.Decoder(_ErrorBody)


MAX_BACKEND_CONNECTIONS: Final = 200


def build_client(base_url: str, timeout_seconds: float) -> httpx.AsyncClient:
    """The one client every backend call shares: the httpx API on aiohttp's connection pool.

    httpx's own pool (httpcore) walks its connections on every request: 250 turns at once
    against an instant backend cost 1.6 s of CPU cold and 4.0 s warm; through the
    httpx-aiohttp transport the same 250 cost 0.07 s (httpx2: 0.23/0.32 s), measured in
    bench/README.md. No cookie is ever kept: calls act for many learners, and a cookie one
    learner's call received must never ride along on another's.
    """
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=MAX_BACKEND_CONNECTIONS, keepalive_timeout=30),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    transport = AiohttpTransport(client=session)
    client = httpx.AsyncClient(
        base_url=base_url,
        # Only connecting is bounded here. The deadline of a whole call is the caller's (the
        # application service): a create that answers after its deadline must still be
        # heard, so that the session it made can be ended.
        timeout=httpx.Timeout(None, connect=timeout_seconds),
        transport=transport,
        headers={"User-Agent": "kalami-gateway"},
    )
    client.cookies.jar.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    return client


class HttpxBackend(Backend):
    """Calls the backend as the learner: every call carries the client's own bearer token."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

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
        boundary = uuid.uuid4().hex
        filename = f"recording.{utterance.audio_format}"
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="audio"; filename="{filename}"\r\n'
            f"Content-Type: {AUDIO_CONTENT_TYPES[utterance.audio_format]}\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        # One join per turn (not per frame): the utterance's chunks go out in arrival order.
        body = b"".join((head, *utterance.chunks, tail))
        response = await self._send(
            "POST",
            f"/conversations/sessions/{session_id}/audio",
            token,
            content=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        turn = _decode(_turn_decoder, response)
        return TurnReply(
            user_text=turn.user_text,
            assistant_text=turn.assistant_text,
            assistant_audio_base64=turn.assistant_audio_base64 or None,
            corrections=[
                GrammarCorrection(c.original, c.corrected, c.explanation)
                for c in turn.corrections or ()
            ],
            vocabulary_introduced=list(turn.vocabulary_introduced or ()),
        )

    async def health(self) -> BackendHealth:
        try:
            # The readiness route bounds this call (5 s) for every backend adapter.
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
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
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
