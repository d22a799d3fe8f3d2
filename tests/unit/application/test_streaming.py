"""Utterances streamed to the backend while the learner speaks (UTTERANCE_UPLOAD=stream), in
the application service with fakes: what is written, aborted, refused, and when it waits."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json

import pytest

from kalami_gateway.application import Connection, ServiceLimits
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain.session import Phase
from tests.unit.application.gateway_on_fakes import gateway_on_fakes
from tests.unit.fakes import (
    FakeBackend,
    FakeChannel,
    FakeClock,
    FakeDecoder,
    FakeMetrics,
)

START = json.dumps({"type": "start_session", "payload": {"profileId": "prof"}})
START_REC = json.dumps({"type": "start_recording", "payload": {"format": "ogg"}})
STOP_REC = '{"type":"stop_recording"}'
END = '{"type":"end_session"}'


class World:
    def __init__(self, backend_timeout: float = 30.0) -> None:
        self.clock = FakeClock()
        self.decoder = FakeDecoder()
        self.backend = FakeBackend()
        ids = (f"conn-{n}" for n in itertools.count(1))
        self.service = gateway_on_fakes(
            ServiceLimits(
                max_message_bytes=4096,
                max_audio_bytes=100,
                stream_uploads=True,
                backend_timeout=backend_timeout,
            ),
            backend=self.backend,
            clock=self.clock,
            decoder=self.decoder,
            metrics=FakeMetrics(),
            new_id=lambda: next(ids),
        )

    async def recording(self) -> tuple[Connection, FakeChannel]:
        token = self.decoder.issue("tok", sub="alice", exp=self.clock.now() + 3600)
        channel = FakeChannel()
        conn = await self.service.open(channel, token)
        assert conn is not None
        await self.service.handle_text(conn, START)
        await self.service.handle_text(conn, START_REC)
        return conn, channel


@pytest.fixture
def world() -> World:
    return World()


async def test_frames_go_to_the_upload_as_they_come_and_the_stop_finishes_it(
    world: World,
) -> None:
    conn, channel = await world.recording()
    [upload] = world.backend.uploads
    assert (upload.session_id, upload.audio_format) == ("s1", "ogg")
    for frame in (b"one", b"two", b"three"):
        await world.service.handle_binary(conn, frame)
    assert upload.chunks == [b"one", b"two", b"three"]  # written before the stop
    assert conn.chunks == []  # nothing kept in the gateway
    assert not upload.finished
    await world.service.handle_text(conn, STOP_REC)
    assert conn.turn is not None
    await conn.turn
    assert upload.finished
    assert world.backend.utterances == [("s1", b"onetwothree", "ogg")]
    assert channel.types()[-3:] == ["transcription", "response", "audio"]
    assert conn.state.phase is Phase.ACTIVE


@pytest.mark.parametrize("how", ["cap", "end_session", "disconnect", "empty"])
async def test_the_upload_is_aborted_and_never_finished(world: World, how: str) -> None:
    conn, channel = await world.recording()
    [upload] = world.backend.uploads
    if how == "cap":
        await world.service.handle_binary(conn, b"x" * 60)
        await world.service.handle_binary(conn, b"x" * 60)  # 120 > 100
        assert "byte limit" in channel.wire()[-1]
    elif how == "end_session":
        await world.service.handle_binary(conn, b"x" * 10)
        await world.service.handle_text(conn, END)
    elif how == "disconnect":
        await world.service.handle_binary(conn, b"x" * 10)
        await world.service.disconnect(conn)
    else:
        await world.service.handle_text(conn, STOP_REC)
        assert "was empty" in channel.wire()[-1]
    assert upload.aborted
    assert not upload.finished
    assert world.backend.utterances == []


async def test_a_failing_backend_mid_upload_gives_one_error_and_the_next_recording_works(
    world: World,
) -> None:
    conn, channel = await world.recording()
    world.backend.upload_fail_at = 2
    for _ in range(5):
        await world.service.handle_binary(conn, b"x" * 10)
    errors = [m for m in channel.sent if isinstance(m, p.Error)]
    assert len(errors) == 1
    assert "Could not send the utterance to the backend" in errors[0].payload.message
    assert channel.types().count("audio_received") == 5  # every frame acknowledged
    [broken] = world.backend.uploads
    assert broken.aborted
    assert broken.writes == 2  # nothing was written after the failure
    before = len(channel.sent)
    await world.service.handle_text(conn, STOP_REC)
    assert len(channel.sent) == before  # answers nothing more
    assert conn.state.phase is Phase.ACTIVE
    world.backend.upload_fail_at = None
    await world.service.handle_text(conn, START_REC)
    await world.service.handle_binary(conn, b"fresh")
    await world.service.handle_text(conn, STOP_REC)
    assert conn.turn is not None
    await conn.turn
    assert world.backend.utterances == [("s1", b"fresh", "ogg")]


async def test_a_backend_that_stops_reading_times_the_upload_out() -> None:
    world = World(backend_timeout=0.05)
    conn, channel = await world.recording()
    world.backend.upload_room = asyncio.Event()  # never set: the backend reads nothing
    await world.service.handle_binary(conn, b"x" * 10)
    assert "the backend timed out" in channel.wire()[-2]
    assert channel.types()[-1] == "audio_received"
    assert world.backend.uploads[0].aborted


async def test_a_slow_backend_holds_the_frame_and_so_the_socket(world: World) -> None:
    conn, _ = await world.recording()
    world.backend.upload_room = asyncio.Event()
    frame = asyncio.create_task(world.service.handle_binary(conn, b"x" * 10))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not frame.done()  # the receive loop waits here: the client's socket is not read
    world.backend.upload_room.set()
    await frame
    assert world.backend.uploads[0].chunks == [b"x" * 10]


async def test_a_base64_audio_message_is_still_one_buffered_call(world: World) -> None:
    token = world.decoder.issue("tok", sub="alice", exp=world.clock.now() + 3600)
    channel = FakeChannel()
    conn = await world.service.open(channel, token)
    assert conn is not None
    await world.service.handle_text(conn, START)
    audio = base64.b64encode(b"whole").decode()
    await world.service.handle_text(
        conn, json.dumps({"type": "audio", "payload": {"audio_base64": audio, "format": "mp3"}})
    )
    assert conn.turn is not None
    await conn.turn
    assert world.backend.uploads == []
    assert world.backend.utterances == [("s1", b"whole", "mp3")]
