"""One contract, two adapters: the stub backend and the httpx backend against a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kalami_gateway.adapters.httpx_backend import HttpxBackend, build_client
from kalami_gateway.adapters.stub_backend import StubBackend
from kalami_gateway.domain.ports import (
    Backend,
    BackendError,
    BackendErrorKind,
    BackendHealth,
    Utterance,
)
from tests.integration.backend_server import BackendServer

TOKEN = "learner-token"


@pytest.fixture(params=["stub", "httpx"])
async def adapter(request: pytest.FixtureRequest, backend: BackendServer) -> AsyncIterator[Backend]:
    if request.param == "stub":
        yield StubBackend()
        return
    client = build_client(backend.url, timeout_seconds=5)
    try:
        yield HttpxBackend(client)
    finally:
        await client.aclose()


async def test_a_session_is_created_and_ended(adapter: Backend) -> None:
    created = await adapter.create_session(TOKEN, "profile-1", "travel")
    assert created.id
    assert created.topic == "travel"
    await adapter.end_session(TOKEN, created.id)


async def test_each_session_gets_its_own_id(adapter: Backend) -> None:
    first = await adapter.create_session(TOKEN, "profile-1", None)
    second = await adapter.create_session(TOKEN, "profile-1", None)
    assert first.id != second.id
    assert first.topic is None


async def test_an_utterance_gets_a_transcription_a_reply_and_corrections(adapter: Backend) -> None:
    created = await adapter.create_session(TOKEN, "profile-1", None)
    chunks = [b"\x01" * 1000, b"\x02" * 234]
    reply = await adapter.submit_utterance(TOKEN, created.id, Utterance(chunks, "wav"))
    assert "1234" in reply.user_text
    assert reply.assistant_text
    assert reply.corrections
    assert all(c.original and c.corrected for c in reply.corrections)
    assert reply.assistant_audio_base64


async def test_ending_an_unknown_session_is_a_rejection(adapter: Backend) -> None:
    with pytest.raises(BackendError) as caught:
        await adapter.end_session(TOKEN, "no-such-session")
    assert caught.value.kind is BackendErrorKind.REJECTED
    assert caught.value.status == 404


async def test_health(adapter: Backend) -> None:
    assert await adapter.health() is BackendHealth.HEALTHY


async def test_the_httpx_backend_sends_the_learners_token_and_the_contract_shapes(
    backend: BackendServer,
) -> None:
    async with build_client(backend.url, 5) as client:
        adapter = HttpxBackend(client)
        created = await adapter.create_session(TOKEN, "profile-9", "food")
        await adapter.submit_utterance(TOKEN, created.id, Utterance([b"abc", b"def"], "m4a"))
        await adapter.end_session(TOKEN, created.id)
    assert backend.created == [({"profile_id": "profile-9", "topic": "food"}, f"Bearer {TOKEN}")]
    [upload] = backend.uploads
    assert (upload.audio, upload.filename, upload.content_type) == (
        b"abcdef",
        "recording.m4a",
        "audio/mp4",
    )
    assert upload.authorization == f"Bearer {TOKEN}"
    assert backend.ended == [(created.id, f"Bearer {TOKEN}")]


async def test_the_httpx_backend_maps_failures(backend: BackendServer) -> None:
    async with build_client(backend.url, 5) as client:
        adapter = HttpxBackend(client)
        created = await adapter.create_session(TOKEN, "p", None)
        backend.audio_status = 500
        with pytest.raises(BackendError) as failed:
            await adapter.submit_utterance(TOKEN, created.id, Utterance([b"x"], "webm"))
        assert (failed.value.kind, failed.value.status) == (BackendErrorKind.REJECTED, 500)
        assert "speech recognition failed" in failed.value.detail
        backend.audio_status = None
        backend.audio_body = b"{not json"
        with pytest.raises(BackendError) as unreadable:
            await adapter.submit_utterance(TOKEN, created.id, Utterance([b"x"], "webm"))
        assert unreadable.value.kind is BackendErrorKind.INVALID_REPLY
    async with build_client("http://127.0.0.1:9", 5) as dead:
        with pytest.raises(BackendError) as unreachable:
            await HttpxBackend(dead).create_session(TOKEN, "p", None)
        assert unreachable.value.kind is BackendErrorKind.UNREACHABLE
        assert await HttpxBackend(dead).health() is BackendHealth.UNREACHABLE
