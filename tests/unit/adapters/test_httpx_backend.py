"""The httpx backend adapter against httpx.MockTransport: request shapes and failure mapping."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from kalami_gateway.adapters.backend.http import HttpxBackend
from kalami_gateway.domain.ports import BackendError, BackendErrorKind, BackendHealth, Utterance

Handler = Callable[[httpx.Request], httpx.Response]
TURN = {
    "user_text": "I goed",
    "assistant_text": "You went!",
    "assistant_audio_base64": None,
    "corrections": [{"original": "goed", "corrected": "went", "explanation": "irregular"}],
    "vocabulary_introduced": None,
}


def backend(handler: Handler) -> HttpxBackend:
    return HttpxBackend(
        httpx.AsyncClient(base_url="http://backend.test", transport=httpx.MockTransport(handler))
    )


async def test_create_session_posts_the_contract_body_with_the_bearer_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"id": 42, "topic": "food", "started_at": "x"})

    created = await backend(handler).create_session("tok", "prof", "food")
    assert (created.id, created.topic) == ("42", "food")
    [request] = seen
    assert (request.method, request.url.path) == ("POST", "/conversations/sessions")
    assert request.headers["Authorization"] == "Bearer tok"
    assert json.loads(request.content) == {"profile_id": "prof", "topic": "food"}


async def test_an_utterance_is_one_multipart_part_named_audio() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=TURN)

    reply = await backend(handler).submit_utterance("tok", "s1", Utterance([b"ab", b"cd"], "ogg"))
    assert reply.user_text == "I goed"
    assert reply.assistant_audio_base64 is None
    assert reply.vocabulary_introduced == []
    assert [(c["original"], c["corrected"]) for c in reply.corrections] == [("goed", "went")]
    [request] = seen
    assert request.url.path == "/conversations/sessions/s1/audio"
    boundary = request.headers["Content-Type"].split("boundary=")[1]
    body = request.content
    assert body.startswith(f"--{boundary}\r\n".encode())
    assert b'name="audio"; filename="recording.ogg"' in body
    assert b"Content-Type: audio/ogg\r\n\r\nabcd\r\n" in body
    assert body.endswith(f"--{boundary}--\r\n".encode())


@pytest.mark.parametrize(
    ("response", "kind", "detail"),
    [
        (
            httpx.Response(401, json={"detail": "Invalid token"}),
            BackendErrorKind.REJECTED,
            "401 (Invalid token)",
        ),
        (
            httpx.Response(422, json={"detail": [{"loc": "x"}]}),
            BackendErrorKind.REJECTED,
            "answered 422.",
        ),
        (
            httpx.Response(502, text="<html>bad gateway</html>"),
            BackendErrorKind.REJECTED,
            "answered 502.",
        ),
        (httpx.Response(201, text="not json"), BackendErrorKind.INVALID_REPLY, "could not read"),
        (
            httpx.Response(201, json={"no_id": True}),
            BackendErrorKind.INVALID_REPLY,
            "could not read",
        ),
    ],
)
async def test_backend_answers_map_to_errors(
    response: httpx.Response, kind: BackendErrorKind, detail: str
) -> None:
    with pytest.raises(BackendError) as caught:
        await backend(lambda _: response).create_session("tok", "p", None)
    assert caught.value.kind is kind
    assert detail in caught.value.detail


@pytest.mark.parametrize(
    ("exception", "kind"),
    [
        (httpx.ConnectError("refused"), BackendErrorKind.UNREACHABLE),
        (httpx.ReadTimeout("slow"), BackendErrorKind.TIMEOUT),
        (httpx.RemoteProtocolError("garbled"), BackendErrorKind.UNREACHABLE),
    ],
)
async def test_transport_failures_map_to_errors(
    exception: Exception, kind: BackendErrorKind
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exception

    with pytest.raises(BackendError) as caught:
        await backend(handler).end_session("tok", "s1")
    assert caught.value.kind is kind


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, BackendHealth.HEALTHY),
        (204, BackendHealth.HEALTHY),
        (500, BackendHealth.UNHEALTHY),
        (404, BackendHealth.UNHEALTHY),
    ],
)
async def test_health(status: int, verdict: BackendHealth) -> None:
    assert await backend(lambda _: httpx.Response(status)).health() is verdict


async def test_health_unreachable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    assert await backend(handler).health() is BackendHealth.UNREACHABLE
