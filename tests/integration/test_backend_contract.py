"""One contract, two adapters: the stub backend and the httpx backend against a real server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kalami_gateway.adapters.backend.corking import backend_socket
from kalami_gateway.adapters.backend.http import HttpxBackend, build_client
from kalami_gateway.adapters.backend.stub import StubBackend
from kalami_gateway.domain.ports import (
    Backend,
    BackendError,
    BackendErrorKind,
    BackendHealth,
    Utterance,
)
from tests.integration.backend_server import BackendServer
from tests.integration.conftest import eventually

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
    assert all(c["original"] and c["corrected"] for c in reply.corrections)
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


async def test_a_streamed_utterance_gets_the_same_turn(adapter: Backend) -> None:
    created = await adapter.create_session(TOKEN, "profile-1", None)
    upload = adapter.open_upload(TOKEN, created.id, "wav")
    for chunk in (b"\x01" * 1000, b"", b"\x02" * 234):
        await upload.write(chunk)
    reply = await upload.finish()
    assert "1234" in reply.user_text
    assert reply.corrections
    assert reply.assistant_audio_base64


async def test_a_streamed_utterance_to_an_unknown_session_is_a_rejection(
    adapter: Backend,
) -> None:
    upload = adapter.open_upload(TOKEN, "no-such-session", "wav")
    await upload.write(b"\x01" * 10)  # the backend reads the whole body before it answers
    with pytest.raises(BackendError) as caught:
        await upload.finish()
    assert (caught.value.kind, caught.value.status) == (BackendErrorKind.REJECTED, 404)


async def test_an_aborted_upload_is_never_a_turn(adapter: Backend) -> None:
    created = await adapter.create_session(TOKEN, "profile-1", None)
    upload = adapter.open_upload(TOKEN, created.id, "wav")
    await upload.write(b"\x01" * 1000)
    upload.abort()
    with pytest.raises(BackendError):
        await upload.finish()


async def test_the_httpx_upload_is_the_same_request_sent_as_the_frames_come(
    backend: BackendServer,
) -> None:
    async with build_client(backend.url, 5) as client:
        adapter = HttpxBackend(client)
        created = await adapter.create_session(TOKEN, "profile-9", "food")
        upload = adapter.open_upload(TOKEN, created.id, "m4a")
        frames = [bytes([n]) * 5000 for n in range(1, 9)]
        for frame in frames:
            await upload.write(frame)
        # Before the end of the body, the backend has the audio already.
        await eventually(lambda: backend.streamed_bytes() >= sum(map(len, frames)))
        assert backend.uploads == []
        await upload.finish()
    [upload_seen] = backend.uploads
    assert (upload_seen.audio, upload_seen.filename, upload_seen.content_type) == (
        b"".join(frames),
        "recording.m4a",
        "audio/mp4",
    )
    assert upload_seen.authorization == f"Bearer {TOKEN}"
    [request] = [r for r in backend.requests if r.raw_path.endswith("/audio")]
    assert request.header("Transfer-Encoding") == "chunked"
    assert (request.header("Content-Type") or "").startswith("multipart/form-data; boundary=")


async def test_only_a_streamed_uploads_socket_is_corked_and_its_turn_is_whole(
    backend: BackendServer,
) -> None:
    made: list[tuple[socket.socket, bool]] = []

    def recording(addr_info: tuple[Any, ...]) -> socket.socket:
        sock = backend_socket(addr_info)
        made.append((sock, sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) != 0))
        return sock

    async with build_client(backend.url, 5, socket_factory=recording) as client:
        adapter = HttpxBackend(client)
        created = await adapter.create_session(TOKEN, "profile-9", None)
        upload = adapter.open_upload(TOKEN, created.id, "webm")
        frames = [bytes([n]) * 4096 for n in range(1, 6)]
        for frame in frames:
            await upload.write(frame)
        reply = await asyncio.wait_for(upload.finish(), 5)
        await adapter.end_session(TOKEN, created.id)
    assert reply.user_text
    assert [was_corked for _, was_corked in made] == [False, True, False]  # create, turn, end
    [seen] = backend.uploads
    assert seen.audio == b"".join(frames)


async def test_an_aborted_httpx_upload_is_a_broken_request_at_the_backend(
    backend: BackendServer,
) -> None:
    async with build_client(backend.url, 5) as client:
        adapter = HttpxBackend(client)
        created = await adapter.create_session(TOKEN, "p", None)
        upload = adapter.open_upload(TOKEN, created.id, "webm")
        await upload.write(b"\x01" * 5000)
        await eventually(lambda: backend.streamed_bytes() >= 5000)
        upload.abort()
        await eventually(lambda: backend.broken_uploads == 1)
        assert backend.uploads == []
        # The client's pool is clean: the next call goes through.
        assert (await adapter.create_session(TOKEN, "p", None)).id


async def test_a_backend_that_answers_mid_upload_fails_the_next_write(
    backend: BackendServer,
) -> None:
    async with build_client(backend.url, 5) as client:
        adapter = HttpxBackend(client)
        backend.reject_early = 503
        upload = adapter.open_upload(TOKEN, "sess", "webm")

        async def write_until_refused() -> None:
            for _ in range(500):  # the 503 arrives while the body is still being written
                await upload.write(b"\x01" * 4096)
                await asyncio.sleep(0.002)

        with pytest.raises(BackendError) as caught:
            await write_until_refused()
        assert caught.value.status == 503
        upload.abort()
        backend.reject_early = None
        assert (await adapter.create_session(TOKEN, "p", None)).id  # the pool is clean
