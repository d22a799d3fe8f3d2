"""Reply audio in the application service, on fakes and the in-memory parking store: a
session that asked for binary reply audio gets ``AudioFrames`` for every turn (a resumed one
and the replies kept while it was away too); the default and the app's way get the ``audio``
message they always got; audio past the cap gets the error instead."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from kalami_gateway.adapters.memory.parking import InMemoryParking
from kalami_gateway.application import Connection, GatewayService, ServiceLimits
from kalami_gateway.domain import parking as pk
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain.session import Phase
from tests.unit.application.gateway_on_fakes import gateway_on_fakes
from tests.unit.fakes import FakeBackend, FakeChannel, FakeClock, FakeDecoder, FakeMetrics

AUDIO = bytes(range(256)) * 1000  # 256,000 bytes: 4 frames
START_REC = json.dumps({"type": "start_recording", "payload": {"format": "wav"}})
STOP_REC = '{"type":"stop_recording"}'
APP_AUDIO = json.dumps(
    {"type": "audio", "payload": {"audio_base64": "AAEC", "format": "m4a", "session_id": "r1"}}
)


def start(reply_audio: str | None) -> str:
    payload: dict[str, str] = {"profileId": "prof"}
    if reply_audio is not None:
        payload["replyAudio"] = reply_audio
    return json.dumps({"type": "start_session", "payload": payload})


@dataclass
class World:
    service: GatewayService
    backend: FakeBackend
    decoder: FakeDecoder
    clock: FakeClock

    async def connect(self, resume: str | None = None) -> tuple[Connection, FakeChannel]:
        token = self.decoder.issue("tok", sub="alice", exp=self.clock.now() + 3600)
        channel = FakeChannel()
        conn = await self.service.open(channel, token, resume=resume)
        assert conn is not None
        return conn, channel

    async def turn(self, conn: Connection) -> None:
        await self.service.handle_text(conn, START_REC)
        await self.service.handle_binary(conn, b"\x01" * 10)
        await self.service.handle_text(conn, STOP_REC)
        if conn.turn is not None:
            await conn.turn


def make_world(max_reply_audio_bytes: int = 1 << 20) -> tuple[World, InMemoryParking]:
    clock = FakeClock()
    decoder = FakeDecoder()
    backend = FakeBackend()
    backend.reply_audio_base64 = base64.b64encode(AUDIO).decode()
    parking = InMemoryParking(pk.ParkingRules(grace=30.0, max_bytes=10 << 20), clock)
    ids = (f"conn-{n}" for n in itertools.count(1))
    service = gateway_on_fakes(
        ServiceLimits(
            max_message_bytes=4096,
            max_audio_bytes=1000,
            resume_grace=30.0,
            max_reply_audio_bytes=max_reply_audio_bytes,
        ),
        backend=backend,
        clock=clock,
        decoder=decoder,
        metrics=FakeMetrics(),
        parking=parking,
        new_id=lambda: next(ids),
    )
    return World(service, backend, decoder, clock), parking


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w, parking = make_world()
    events = asyncio.create_task(parking.run(w.service))
    await asyncio.sleep(0)
    yield w
    events.cancel()


FRAMES = p.AudioFrames(p.AudioFramesPayload(AUDIO))


async def test_a_binary_session_gets_every_turns_audio_as_frames(world: World) -> None:
    conn, channel = await world.connect()
    await world.service.handle_text(conn, start("binary"))
    for _ in range(2):
        await world.turn(conn)
    one_turn = ["recording_started", "audio_received", "processing", "transcription"]
    assert channel.types()[2:] == [*one_turn, "response", "audio_frames"] * 2
    assert channel.sent[-1] == FRAMES


@pytest.mark.parametrize("asked", [None, "json"])
async def test_by_default_the_audio_message_is_unchanged(world: World, asked: str | None) -> None:
    conn, channel = await world.connect()
    await world.service.handle_text(conn, start(asked))
    await world.turn(conn)
    assert channel.sent[-1] == p.AudioReply(
        p.AudioReplyPayload(base64.b64encode(AUDIO).decode(), "mp3")
    )


async def test_the_apps_way_gets_the_audio_message(world: World) -> None:
    conn, channel = await world.connect()
    await world.service.handle_text(conn, APP_AUDIO)
    assert conn.turn is not None
    await conn.turn
    assert channel.types()[1:] == ["processing", "transcription", "response", "audio"]


async def test_the_apps_way_on_a_binary_connection_gets_frames(world: World) -> None:
    conn, channel = await world.connect()
    await world.service.handle_text(conn, start("binary"))
    await world.service.handle_text(conn, APP_AUDIO)
    assert conn.turn is not None
    await conn.turn
    assert channel.sent[-1] == FRAMES


async def test_audio_past_the_cap_is_an_error_in_its_place() -> None:
    w, _ = make_world(max_reply_audio_bytes=len(AUDIO) - 1)
    for asked in ("binary", "json"):
        conn, channel = await w.connect()
        await w.service.handle_text(conn, start(asked))
        await w.turn(conn)
        assert channel.types()[-3:] == ["transcription", "response", "error"]
        error = channel.sent[-1]
        assert isinstance(error, p.Error)
        assert (error.payload.code, error.payload.in_reply_to) == ("reply_audio_too_large", None)
        assert conn.state.phase is Phase.ACTIVE  # the turn is over, as any other


async def test_a_reply_kept_while_away_comes_as_frames_and_the_session_stays_binary(
    world: World,
) -> None:
    world.backend.hold_turns = True
    conn, _ = await world.connect()
    await world.service.handle_text(conn, start("binary"))
    await world.service.handle_text(conn, START_REC)
    await world.service.handle_binary(conn, b"\x01" * 10)
    await world.service.handle_text(conn, STOP_REC)
    await asyncio.wait_for(world.backend.turn_started.wait(), 1)
    await world.service.disconnect(conn, "connection_lost")
    world.backend.release.set()
    for _ in range(5):
        await asyncio.sleep(0)
    new, channel = await world.connect(resume=conn.resume_token)
    assert channel.types() == [
        *("connected", "session_resumed", "transcription", "response"),
        "audio_frames",
    ]
    assert channel.sent[-1] == FRAMES
    assert new.state.reply_audio == "binary"
    world.backend.hold_turns = False
    await world.turn(new)
    assert channel.sent[-1] == FRAMES  # the resumed session's own turns too


async def test_a_resumed_json_session_stays_json(world: World) -> None:
    conn, _ = await world.connect()
    await world.service.handle_text(conn, start(None))
    await world.service.disconnect(conn, "connection_lost")
    new, channel = await world.connect(resume=conn.resume_token)
    await world.turn(new)
    assert channel.types()[-1] == "audio"
