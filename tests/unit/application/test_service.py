"""The application service with fakes: connect, frames, turns, disconnect, expiry, drain."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from dataclasses import dataclass

import pytest

from kalami_gateway.adapters.memory.directory import InMemoryDirectory
from kalami_gateway.application import Connection, GatewayService, ServiceLimits
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain.ports import BackendError, BackendErrorKind
from kalami_gateway.domain.session import Phase
from tests.unit.application.gateway_on_fakes import gateway_on_fakes
from tests.unit.fakes import (
    FakeBackend,
    FakeChannel,
    FakeClock,
    FakeDecoder,
    FakeMetrics,
)

START = json.dumps({"type": "start_session", "payload": {"profileId": "prof", "topic": "food"}})
START_REC = json.dumps({"type": "start_recording", "payload": {"format": "wav"}})
STOP_REC = '{"type":"stop_recording"}'
END = '{"type":"end_session"}'
PING = '{"type":"ping"}'


@dataclass
class World:
    service: GatewayService
    backend: FakeBackend
    directory: InMemoryDirectory
    clock: FakeClock
    decoder: FakeDecoder
    metrics: FakeMetrics

    async def connect(
        self, user: str = "alice", ttl: float = 3600
    ) -> tuple[Connection, FakeChannel]:
        token = self.decoder.issue(f"tok-{user}-{ttl}", sub=user, exp=self.clock.now() + ttl)
        channel = FakeChannel()
        conn = await self.service.open(channel, token)
        assert conn is not None
        return conn, channel

    async def recording(self, user: str = "alice") -> tuple[Connection, FakeChannel]:
        conn, channel = await self.connect(user)
        await self.service.handle_text(conn, START)
        await self.service.handle_text(conn, START_REC)
        return conn, channel


@pytest.fixture
def world() -> World:
    clock = FakeClock()
    decoder = FakeDecoder()
    backend = FakeBackend()
    directory = InMemoryDirectory()
    metrics = FakeMetrics()
    ids = (f"conn-{n}" for n in itertools.count(1))
    service = gateway_on_fakes(
        ServiceLimits(max_message_bytes=4096, max_audio_bytes=1000),
        backend=backend,
        clock=clock,
        decoder=decoder,
        metrics=metrics,
        directory=directory,
        new_id=lambda: next(ids),
    )
    return World(service, backend, directory, clock, decoder, metrics)


async def finish_turn(conn: Connection) -> None:
    if conn.turn is not None:
        await conn.turn


async def test_no_token_closes_4001_and_registers_nothing(world: World) -> None:
    channel = FakeChannel()
    assert await world.service.open(channel, None) is None
    assert channel.closed_with == (4001, "Authentication required")
    assert channel.sent == []
    assert (await world.directory.counts()).connections == 0


async def test_an_unknown_token_closes_4002(world: World) -> None:
    channel = FakeChannel()
    assert await world.service.open(channel, "forged") is None
    assert channel.closed_with == (4002, "Invalid token")


async def test_a_good_token_is_welcomed_and_registered(world: World) -> None:
    conn, channel = await world.connect("alice")
    assert channel.sent == [
        p.Connected(p.ConnectedPayload("conn-1", int(world.clock.now() + 3600), conn.resume_token))
    ]
    stats = world.service.instance_stats()
    assert (stats.connections, stats.users) == (1, 1)
    assert await world.directory.connections_of("alice") == {conn.id}


async def test_ping_heartbeat_and_bad_frames_keep_the_connection_open(world: World) -> None:
    conn, channel = await world.connect()
    for frame in (PING, '{"type":"heartbeat"}', "{nope", '{"type":"dance"}', STOP_REC):
        await world.service.handle_text(conn, frame)
    await world.service.handle_binary(conn, b"audio")
    assert channel.types() == ["connected", "pong", "heartbeat", "error", "error", "error", "error"]
    assert channel.closed_with is None
    assert world.metrics.messages == [
        "ping",
        "heartbeat",
        "invalid",
        "invalid",
        "stop_recording",
        "audio_frame",
    ]


async def test_start_session_uses_the_clients_token(world: World) -> None:
    conn, channel = await world.connect()
    await world.service.handle_text(conn, START)
    assert world.backend.calls == [("create", conn.token, "prof", "food")]
    assert channel.sent[-1] == p.SessionStarted(p.SessionStartedPayload("s1", "prof", "food"))
    assert conn.state.phase is Phase.ACTIVE


async def test_a_failed_session_start_is_an_error_and_stays_idle(world: World) -> None:
    conn, channel = await world.connect()
    world.backend.fail_next = BackendError(
        BackendErrorKind.REJECTED, "the backend answered 404.", 404
    )
    await world.service.handle_text(conn, START)
    last = channel.sent[-1]
    assert isinstance(last, p.Error)
    assert last.payload.message == "Could not start the session: the backend answered 404."
    assert conn.state.phase is Phase.IDLE
    assert world.metrics.backend_errors == [BackendErrorKind.REJECTED]


async def test_a_full_turn_delivers_the_utterance_in_order_and_relays_the_reply(
    world: World,
) -> None:
    conn, channel = await world.recording()
    frames = [bytes([n]) * 100 for n in range(5)]
    for frame in frames:
        await world.service.handle_binary(conn, frame)
    await world.service.handle_text(conn, STOP_REC)
    await finish_turn(conn)
    assert world.backend.utterances == [("s1", b"".join(frames), "wav")]
    assert channel.types()[-9:] == [
        "audio_received",
        "audio_received",
        "audio_received",
        "audio_received",
        "audio_received",
        "processing",
        "transcription",
        "response",
        "audio",
    ]
    assert channel.sent[-3] == p.Transcription(p.TranscriptionPayload("heard 500 bytes"))
    assert conn.state.phase is Phase.ACTIVE
    assert conn.chunks == []
    assert world.metrics.turns == ["ok"]
    assert world.metrics.audio_bytes == 500


async def test_the_connection_answers_while_a_turn_is_in_flight(world: World) -> None:
    conn, channel = await world.recording()
    world.backend.hold_turns = True
    await world.service.handle_binary(conn, b"x" * 10)
    await world.service.handle_text(conn, STOP_REC)
    await world.backend.turn_started.wait()
    await world.service.handle_text(conn, PING)
    await world.service.handle_text(conn, START_REC)
    assert channel.types()[-3:] == ["processing", "pong", "error"]
    world.backend.release.set()
    await finish_turn(conn)
    assert channel.types()[-3:] == ["transcription", "response", "audio"]


async def test_a_failed_turn_then_a_good_one(world: World) -> None:
    conn, channel = await world.recording()
    world.backend.fail_next = BackendError(BackendErrorKind.TIMEOUT, "the backend timed out.")
    await world.service.handle_binary(conn, b"one")
    await world.service.handle_text(conn, STOP_REC)
    await finish_turn(conn)
    assert channel.types()[-2:] == ["processing", "error"]
    assert conn.state.phase is Phase.ACTIVE
    await world.service.handle_text(conn, START_REC)
    await world.service.handle_binary(conn, b"two")
    await world.service.handle_text(conn, STOP_REC)
    await finish_turn(conn)
    assert channel.types()[-3:] == ["transcription", "response", "audio"]
    assert [u[1] for u in world.backend.utterances] == [b"one", b"two"]
    assert world.metrics.turns == ["backend_timeout", "ok"]


async def test_too_much_audio_drops_the_utterance_and_keeps_the_connection(world: World) -> None:
    conn, channel = await world.recording()
    await world.service.handle_binary(conn, b"a" * 600)
    await world.service.handle_binary(conn, b"b" * 600)
    last = channel.sent[-1]
    assert isinstance(last, p.Error)
    assert "1000-byte limit" in last.payload.message
    assert conn.state.phase is Phase.ACTIVE
    assert conn.chunks == []
    assert channel.closed_with is None


async def test_a_base64_audio_message_is_a_turn(world: World) -> None:
    conn, channel = await world.connect()
    await world.service.handle_text(conn, START)
    audio = json.dumps(
        {
            "type": "audio",
            "payload": {"audio_base64": base64.b64encode(b"hello").decode(), "format": "mp3"},
        }
    )
    await world.service.handle_text(conn, audio)
    await finish_turn(conn)
    assert world.backend.utterances == [("s1", b"hello", "mp3")]
    assert channel.types()[-4:] == ["processing", "transcription", "response", "audio"]


async def test_invalid_base64_is_an_error_back_to_active(world: World) -> None:
    conn, channel = await world.connect()
    await world.service.handle_text(conn, START)
    await world.service.handle_text(conn, '{"type":"audio","payload":{"audio_base64":"***"}}')
    await finish_turn(conn)
    last = channel.sent[-1]
    assert isinstance(last, p.Error)
    assert "base64" in last.payload.message
    assert conn.state.phase is Phase.ACTIVE
    assert world.backend.utterances == []


async def test_end_session_mid_turn_cancels_it_and_ends_the_session(world: World) -> None:
    conn, channel = await world.recording()
    world.backend.hold_turns = True
    await world.service.handle_binary(conn, b"x")
    await world.service.handle_text(conn, STOP_REC)
    await world.backend.turn_started.wait()
    turn = conn.turn
    await world.service.handle_text(conn, END)
    assert turn is not None
    assert turn.cancelled()
    assert channel.sent[-1] == p.SessionEnded(p.SessionEndedPayload("s1"))
    assert ("end", conn.token, "s1") in world.backend.calls
    assert conn.state.phase is Phase.IDLE


async def test_session_ended_even_when_the_backend_end_fails(world: World) -> None:
    conn, channel = await world.connect()
    await world.service.handle_text(conn, START)
    world.backend.fail_end = True
    await world.service.handle_text(conn, END)
    assert channel.sent[-1] == p.SessionEnded(p.SessionEndedPayload("s1"))
    assert world.metrics.backend_errors == [BackendErrorKind.UNREACHABLE]


async def test_disconnect_mid_turn_cancels_and_ends_the_session(world: World) -> None:
    conn, _ = await world.recording()
    world.backend.hold_turns = True
    await world.service.handle_binary(conn, b"x")
    await world.service.handle_text(conn, STOP_REC)
    await world.backend.turn_started.wait()
    turn = conn.turn
    await world.service.disconnect(conn)
    assert turn is not None
    assert turn.cancelled()
    assert world.backend.calls[-1] == ("end", conn.token, "s1")
    assert (await world.directory.counts()).connections == 0
    await world.service.disconnect(conn)  # twice is harmless
    assert world.backend.calls.count(("end", conn.token, "s1")) == 1


async def test_expired_tokens_are_closed_4003_on_the_tick(world: World) -> None:
    short, short_channel = await world.connect("alice", ttl=10)
    _, long_channel = await world.connect("bob", ttl=100)
    assert await world.service.expire_tokens() == 0
    world.clock.advance(11)
    assert await world.service.expire_tokens() == 1
    assert short_channel.closed_with == (4003, "Token expired")
    assert long_channel.closed_with is None
    assert short.id not in await world.directory.connections_of("alice")
    assert (await world.directory.counts()).users == 1


async def test_an_oversized_frame_closes_1009(world: World) -> None:
    conn, channel = await world.connect()
    await world.service.handle_binary(conn, b"x" * 4097)
    assert channel.closed_with is not None
    assert channel.closed_with[0] == 1009
    assert (await world.directory.counts()).connections == 0


async def test_drain_closes_everyone_1001_ends_sessions_and_refuses_newcomers(world: World) -> None:
    conn, channel = await world.connect("alice")
    await world.service.handle_text(conn, START)
    _, other = await world.connect("bob")
    await world.service.drain()
    assert channel.closed_with == (1001, "Server shutting down")
    assert other.closed_with == (1001, "Server shutting down")
    assert ("end", conn.token, "s1") in world.backend.calls
    assert (await world.directory.counts()).connections == 0
    late = FakeChannel()
    token = world.decoder.issue("late", sub="carol", exp=world.clock.now() + 60)
    assert await world.service.open(late, token) is None
    assert late.closed_with == (1001, "Server shutting down")


async def test_a_client_leaving_while_its_session_is_created_does_not_leak_it(world: World) -> None:
    conn, _ = await world.connect()
    gate = asyncio.Event()
    original = world.backend.create_session

    async def slow_create(token: str, profile_id: str, topic: str | None) -> object:
        await gate.wait()
        return await original(token, profile_id, topic)

    world.backend.create_session = slow_create  # type: ignore[method-assign,assignment]
    starting = asyncio.create_task(world.service.handle_text(conn, START))
    await asyncio.sleep(0)
    await world.service.disconnect(conn)
    gate.set()
    await starting
    assert world.backend.calls[-1] == ("end", conn.token, "s1")


async def test_the_connection_over_the_cap_is_closed_4004(world: World) -> None:
    limited = gateway_on_fakes(
        ServiceLimits(max_message_bytes=4096, max_audio_bytes=1000, max_connections_per_user=2),
        backend=world.backend,
        clock=world.clock,
        decoder=world.decoder,
        metrics=world.metrics,
        directory=world.directory,
    )
    token = world.decoder.issue("capped", sub="alice", exp=world.clock.now() + 60)
    opened = [await limited.open(FakeChannel(), token) for _ in range(2)]
    over = FakeChannel()
    assert await limited.open(over, token) is None
    assert over.closed_with == (4004, "Too many connections")
    assert over.sent == []
    assert world.metrics.closed == ["too_many_connections"]
    assert limited.instance_stats().connections == 2
    first = opened[0]
    assert first is not None
    await limited.disconnect(first)
    assert await limited.open(FakeChannel(), token) is not None  # room again


async def test_a_push_reaches_every_connection_of_the_user_here(world: World) -> None:
    _, phone = await world.connect("alice")
    _, laptop = await world.connect("alice")
    _, other = await world.connect("bob")
    assert await world.service.deliver_push("alice", b'{"kind":"streak","days":3}') == 2
    await asyncio.sleep(0)  # each delivery is a task of its own
    for channel in (phone, laptop):
        assert channel.wire()[-1] == '{"type":"push","payload":{"kind":"streak","days":3}}'
    assert other.types() == ["connected"]
    assert await world.service.deliver_push("nobody", b"{}") == 0


def refresh(token: str) -> str:
    return json.dumps({"type": "refresh", "payload": {"token": token}})


async def test_a_refresh_extends_the_connection_and_carries_the_new_bearer(world: World) -> None:
    conn, channel = await world.connect("alice", ttl=100)
    fresh = world.decoder.issue("fresh", sub="alice", exp=world.clock.now() + 7200)
    await world.service.handle_text(conn, refresh(fresh))
    assert channel.sent[-1] == p.Refreshed(p.ExpiryPayload(int(world.clock.now() + 7200)))
    world.clock.advance(200)  # past the first token's exp
    assert await world.service.expire_tokens() == 0
    await world.service.handle_text(conn, START)
    assert world.backend.calls[-1][1] == "fresh"  # later backend calls act with the new one


async def test_a_refused_refresh_changes_nothing(world: World) -> None:
    conn, channel = await world.connect("alice", ttl=100)
    stranger = world.decoder.issue("stranger", sub="mallory", exp=world.clock.now() + 7200)
    await world.service.handle_text(conn, refresh(stranger))
    await world.service.handle_text(conn, refresh("not-a-token"))
    assert channel.types()[-2:] == ["error", "error"]
    assert "another user" in channel.wire()[-2]
    assert "not valid" in channel.wire()[-1]
    world.clock.advance(101)
    assert await world.service.expire_tokens() == 1
    assert channel.closed_with == (4003, "Token expired")


async def test_token_expiring_is_sent_once_before_expiry_then_4003() -> None:
    clock = FakeClock()
    decoder = FakeDecoder()
    service = gateway_on_fakes(
        ServiceLimits(4096, 1000, token_expiry_warning=60),
        backend=FakeBackend(),
        clock=clock,
        decoder=decoder,
        metrics=FakeMetrics(),
    )
    token = decoder.issue("t", sub="alice", exp=clock.now() + 100)
    channel = FakeChannel()
    conn = await service.open(channel, token)
    assert conn is not None
    clock.advance(30)
    await service.expire_tokens()
    assert channel.types() == ["connected"]  # 70 s left: not yet
    clock.advance(15)
    await service.expire_tokens()
    await service.expire_tokens()
    assert channel.types() == ["connected", "token_expiring"]  # once
    assert channel.sent[-1] == p.TokenExpiring(p.ExpiryPayload(int(clock.now() + 55)))
    fresh = decoder.issue("fresh", sub="alice", exp=clock.now() + 100)
    await service.handle_text(conn, refresh(fresh))
    clock.advance(45)
    await service.expire_tokens()
    assert channel.types()[-1] == "token_expiring"  # warned again, for the new token
    clock.advance(56)
    assert await service.expire_tokens() == 1
    assert channel.closed_with == (4003, "Token expired")


async def test_closed_connections_do_not_pile_up_in_the_expiry_queue(world: World) -> None:
    for _ in range(3000):
        conn, _ = await world.connect("alice")
        await world.service.disconnect(conn)
    await world.connect("bob")
    assert len(world.service._expiry) <= 4 * 257 + 2  # compacted as they closed
    world.clock.advance(3600 + 1)
    assert await world.service.expire_tokens() == 1  # bob's, still there


def app_audio(session_id: str | int, audio: bytes = b"hello", **extra: object) -> str:
    """An utterance as the Kalami app sends it: one message naming its REST session."""
    payload = {"audio_base64": base64.b64encode(audio).decode(), "format": "m4a"}
    return json.dumps({"type": "audio", "payload": {**payload, "session_id": session_id, **extra}})


async def test_the_apps_audio_runs_a_turn_on_the_session_it_names(world: World) -> None:
    conn, channel = await world.connect()
    await world.service.handle_text(conn, app_audio("rest-7", client_ts=1))
    await finish_turn(conn)
    assert world.backend.utterances == [("rest-7", b"hello", "m4a")]
    assert ("turn", conn.token, "rest-7") in world.backend.calls
    assert channel.types()[1:] == ["processing", "transcription", "response", "audio"]
    assert conn.state.phase is Phase.IDLE
    await world.service.handle_text(conn, app_audio(8, b"again"))  # a number is an id too
    await finish_turn(conn)
    assert world.backend.utterances[-1] == ("8", b"again", "m4a")


async def test_a_session_the_gateway_did_not_start_is_never_ended_by_it(world: World) -> None:
    conn, channel = await world.connect()
    await world.service.handle_text(conn, app_audio("rest-7"))
    await finish_turn(conn)
    await world.service.handle_text(conn, END)
    assert isinstance(channel.sent[-1], p.Error)
    world.backend.hold_turns = True
    await world.service.handle_text(conn, app_audio("rest-7"))
    await world.backend.turn_started.wait()
    await world.service.disconnect(conn)  # mid-turn, too
    assert [c for c in world.backend.calls if c[0] == "end"] == []


async def test_one_turn_at_a_time_in_the_apps_dialect(world: World) -> None:
    conn, channel = await world.connect()
    world.backend.hold_turns = True
    await world.service.handle_text(conn, app_audio("rest-7"))
    await world.backend.turn_started.wait()
    for frame in (app_audio("rest-7"), START):
        await world.service.handle_text(conn, frame)
        last = channel.sent[-1]
        assert isinstance(last, p.Error)
        assert "still being processed" in last.payload.message
    world.backend.release.set()
    await finish_turn(conn)
    assert channel.types()[-3:] == ["transcription", "response", "audio"]
    assert len(world.backend.utterances) == 1


async def test_the_apps_turn_keeps_the_connections_own_session(world: World) -> None:
    conn, _ = await world.connect()
    await world.service.handle_text(conn, START)
    await world.service.handle_text(conn, app_audio("rest-7"))
    await finish_turn(conn)
    assert world.backend.utterances[-1][0] == "rest-7"
    assert (conn.state.phase, conn.state.session_id) == (Phase.ACTIVE, "s1")
    await world.service.handle_text(conn, END)
    assert [c for c in world.backend.calls if c[0] == "end"] == [("end", conn.token, "s1")]


async def test_a_backend_refusal_of_the_named_session_is_an_error(world: World) -> None:
    conn, channel = await world.connect()
    world.backend.fail_next = BackendError(
        BackendErrorKind.REJECTED, "the backend answered 404 (Session not found).", 404
    )
    await world.service.handle_text(conn, app_audio("not-mine"))
    await finish_turn(conn)
    last = channel.sent[-1]
    assert isinstance(last, p.Error)
    assert "404" in last.payload.message
    assert conn.state.phase is Phase.IDLE


async def test_the_apps_heartbeat_is_answered_once_and_its_answer_not_at_all(
    world: World,
) -> None:
    conn, channel = await world.connect()
    await world.service.handle_text(conn, '{"type":"heartbeat","payload":{"ping":true}}')
    await world.service.handle_text(conn, '{"type":"heartbeat","payload":{"pong":true}}')
    assert channel.types() == ["connected", "heartbeat"]
    assert channel.sent[-1] == p.HeartbeatReply()


async def test_a_token_expiring_mid_turn_gets_the_reply_then_4003(world: World) -> None:
    conn, channel = await world.connect(ttl=10)
    world.backend.hold_turns = True
    await world.service.handle_text(conn, app_audio("rest-7"))
    await world.backend.turn_started.wait()
    world.clock.advance(11)
    assert await world.service.expire_tokens() == 0
    assert channel.closed_with is None
    world.backend.release.set()
    await finish_turn(conn)
    assert channel.types()[-3:] == ["transcription", "response", "audio"]
    assert channel.closed_with == (4003, "Token expired")
    assert (await world.directory.counts()).connections == 0


async def test_a_refresh_during_the_turn_keeps_the_connection(world: World) -> None:
    conn, channel = await world.connect(ttl=10)
    world.backend.hold_turns = True
    await world.service.handle_text(conn, app_audio("rest-7"))
    await world.backend.turn_started.wait()
    world.clock.advance(11)
    await world.service.expire_tokens()
    fresh = world.decoder.issue("tok-fresh", sub="alice", exp=world.clock.now() + 3600)
    await world.service.handle_text(
        conn, json.dumps({"type": "refresh", "payload": {"token": fresh}})
    )
    world.backend.release.set()
    await finish_turn(conn)
    assert channel.closed_with is None
    assert channel.types()[-1] == "audio"


async def test_session_starts_are_budgeted_per_user_across_reconnects() -> None:
    clock = FakeClock()
    decoder = FakeDecoder()
    backend = FakeBackend()
    service = gateway_on_fakes(
        ServiceLimits(max_message_bytes=4096, max_audio_bytes=1000, session_start_rate=3),
        backend=backend,
        clock=clock,
        decoder=decoder,
        metrics=FakeMetrics(),
    )

    async def connect(user: str) -> tuple[Connection, FakeChannel]:
        channel = FakeChannel()
        token = decoder.issue(f"tok-{user}", sub=user, exp=clock.now() + 3600)
        conn = await service.open(channel, token)
        assert conn is not None
        return conn, channel

    for _ in range(3):  # connect, start, drop: a minute's budget
        conn, channel = await connect("alice")
        await service.handle_text(conn, START)
        assert channel.types()[-1] == "session_started"
        await service.disconnect(conn)
    conn, channel = await connect("alice")
    await service.handle_text(conn, START)
    assert channel.types()[-1] == "error"
    assert "Too many sessions" in channel.wire()[-1]
    assert sum(1 for c in backend.calls if c[0] == "create") == 3
    other, other_channel = await connect("bob")  # another user is not affected
    await service.handle_text(other, START)
    assert other_channel.types()[-1] == "session_started"
    clock.advance(20)  # 3 a minute: one more after 20 s
    await service.handle_text(conn, START)
    assert channel.types()[-1] == "session_started"
