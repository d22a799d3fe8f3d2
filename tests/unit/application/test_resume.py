"""Resumable sessions in the application service, on the in-memory store and a fake clock:
parking on a drop, resuming, refusals, takeover, expiry, shutdown."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from kalami_gateway.adapters.memory.parking import InMemoryParking
from kalami_gateway.application import LOST_REPLY, Connection, GatewayService, ServiceLimits
from kalami_gateway.domain import parking as pk
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain.session import Phase
from tests.unit.application.clock_sleep import ClockSleep
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
GRACE = 30.0
# A lost turn's error: answering no message of the connection that hears it.
TURN_LOST = p.Error(p.ErrorPayload(LOST_REPLY, "turn_lost"))


def refused(refusal: pk.Refusal, reason: str) -> p.Error:
    """A refused resume as the client hears it: the message it always had, its code, and the
    refusal's reason (answering no message: the resume came with the handshake)."""
    return p.Error(p.ErrorPayload(pk.refusal_message(refusal), "resume_refused", reason=reason))


@dataclass
class World:
    service: GatewayService
    backend: FakeBackend
    parking: InMemoryParking
    clock: FakeClock
    decoder: FakeDecoder
    metrics: FakeMetrics
    sleep: ClockSleep  # the service's timers, on the fake clock

    async def connect(
        self, user: str = "alice", resume: str | None = None
    ) -> tuple[Connection, FakeChannel]:
        token = self.decoder.issue(f"tok-{user}", sub=user, exp=self.clock.now() + 3600)
        channel = FakeChannel()
        conn = await self.service.open(channel, token, resume=resume)
        assert conn is not None
        return conn, channel

    async def in_session(self, user: str = "alice") -> tuple[Connection, FakeChannel]:
        conn, channel = await self.connect(user)
        await self.service.handle_text(conn, START)
        assert conn.state.phase is Phase.ACTIVE
        return conn, channel

    async def mid_turn(self) -> tuple[Connection, FakeChannel]:
        """A session whose turn waits at the backend until ``backend.release`` is set."""
        self.backend.hold_turns = True
        conn, channel = await self.in_session()
        await self.service.handle_text(conn, START_REC)
        await self.service.handle_binary(conn, b"\x01" * 10)
        await self.service.handle_text(conn, STOP_REC)
        await asyncio.wait_for(self.backend.turn_started.wait(), 1)
        return conn, channel

    def ends(self) -> list[tuple[str, ...]]:
        return [c for c in self.backend.calls if c[0] == "end"]


class OutlivingParking(InMemoryParking):
    """A store that outlives this instance, as Redis does: nothing is handed back at exit."""

    async def leave(self) -> list[pk.SessionRecord]:
        return []


def make_world(
    grace: float = GRACE, restart_parks: bool = False, backend_timeout: float = 30.0
) -> World:
    clock = FakeClock()
    decoder = FakeDecoder()
    backend = FakeBackend()
    metrics = FakeMetrics()
    rules = pk.ParkingRules(grace=grace, max_bytes=1000)
    parking = OutlivingParking(rules, clock) if restart_parks else InMemoryParking(rules, clock)
    ids = (f"conn-{n}" for n in itertools.count(1))
    tokens = (f"resume-{n}" for n in itertools.count(1))
    sleep = ClockSleep(clock)
    service = gateway_on_fakes(
        ServiceLimits(
            max_message_bytes=4096,
            max_audio_bytes=1000,
            resume_grace=grace,
            restart_parks=restart_parks,
            shutdown_turn_wait=1.0,
            backend_timeout=backend_timeout,
            remote_turn_slack=0.0,
        ),
        backend=backend,
        clock=clock,
        decoder=decoder,
        metrics=metrics,
        parking=parking,
        sleep=sleep,
        new_id=lambda: next(ids),
        new_resume_token=lambda: next(tokens),
    )
    return World(service, backend, parking, clock, decoder, metrics, sleep)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = make_world()
    events = asyncio.create_task(w.parking.run(w.service))
    await asyncio.sleep(0)
    yield w
    events.cancel()


def phase_of(conn: Connection) -> Phase:
    return conn.state.phase  # read afresh (mypy would keep an earlier assert's narrowing)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_connected_carries_a_new_resume_token_per_connection(world: World) -> None:
    a, channel_a = await world.connect()
    b, _ = await world.connect()
    assert channel_a.sent[0] == p.Connected(
        p.ConnectedPayload(a.id, int(world.clock.now() + 3600), "resume-1")
    )
    assert (a.resume_token, b.resume_token) == ("resume-1", "resume-2")


async def test_a_drop_parks_the_session_and_a_resume_carries_it_on(world: World) -> None:
    conn, _ = await world.in_session()
    await world.service.disconnect(conn, "connection_lost")
    assert world.ends() == []
    assert await world.service.parked_sessions() == 1
    new, channel = await world.connect(resume=conn.resume_token)
    assert channel.types() == ["connected", "session_resumed"]
    assert channel.sent[1] == p.SessionResumed(
        p.SessionResumedPayload("s1", "prof", "food", "active")
    )
    assert new.state.phase is Phase.ACTIVE
    assert world.metrics.parking == ["parked", "resumed"]
    await world.service.handle_text(new, START_REC)
    await world.service.handle_binary(new, b"\x02" * 5)
    await world.service.handle_text(new, STOP_REC)
    assert new.turn is not None
    await new.turn
    assert world.backend.calls[-1] == ("turn", "tok-alice", "s1")
    assert await world.service.parked_sessions() == 0


async def test_a_turn_in_flight_keeps_running_and_its_replies_are_kept(world: World) -> None:
    conn, _ = await world.mid_turn()
    await world.service.disconnect(conn, "connection_lost")
    world.backend.release.set()
    await settle()
    assert world.ends() == []
    new, channel = await world.connect(resume=conn.resume_token)
    assert channel.types() == ["connected", "session_resumed", "transcription", "response", "audio"]
    assert channel.sent[1].payload.state == "active"  # type: ignore[union-attr]
    assert channel.sent[2] == p.Transcription(p.TranscriptionPayload("heard 10 bytes"))
    assert new.state.phase is Phase.ACTIVE


async def test_a_resume_mid_turn_gets_the_replies_when_they_come(world: World) -> None:
    conn, _ = await world.mid_turn()
    await world.service.disconnect(conn, "connection_lost")
    new, channel = await world.connect(resume=conn.resume_token)
    assert channel.types() == ["connected", "session_resumed"]
    assert channel.sent[1].payload.state == "processing"  # type: ignore[union-attr]
    assert new.state.phase is Phase.PROCESSING
    world.backend.release.set()
    await settle()
    assert channel.types()[2:] == ["transcription", "response", "audio"]
    assert phase_of(new) is Phase.ACTIVE
    assert new.watchdog is None


async def test_a_recording_in_progress_is_dropped_on_park(world: World) -> None:
    conn, _ = await world.in_session()
    await world.service.handle_text(conn, START_REC)
    await world.service.handle_binary(conn, b"\x01" * 10)
    await world.service.disconnect(conn, "connection_lost")
    new, channel = await world.connect(resume=conn.resume_token)
    assert channel.sent[1].payload.state == "active"  # type: ignore[union-attr]
    assert new.state.phase is Phase.ACTIVE
    assert world.backend.utterances == []


async def test_a_token_resumes_once(world: World) -> None:
    conn, _ = await world.in_session()
    await world.service.disconnect(conn)
    await world.connect(resume=conn.resume_token)
    second, channel = await world.connect(resume=conn.resume_token)
    assert channel.types() == ["connected", "error"]
    assert channel.sent[1] == refused(pk.Refusal.USED, "used")
    assert second.state.phase is Phase.IDLE


async def test_another_users_token_is_refused_and_changes_nothing(world: World) -> None:
    conn, _ = await world.in_session("alice")
    await world.service.disconnect(conn)
    mallory, channel = await world.connect("mallory", resume=conn.resume_token)
    assert channel.sent[1] == refused(pk.Refusal.OTHER_USER, "other_user")
    assert mallory.state.phase is Phase.IDLE
    assert await world.service.parked_sessions() == 1
    _, owner = await world.connect("alice", resume=conn.resume_token)
    assert owner.types() == ["connected", "session_resumed"]


@pytest.mark.parametrize("resume", ["never-issued", ""])
async def test_an_unknown_token_is_refused(world: World, resume: str) -> None:
    conn, channel = await world.connect(resume=resume)
    assert channel.sent[1] == refused(pk.Refusal.UNKNOWN, "unknown")
    assert conn.state.phase is Phase.IDLE


async def test_a_connection_without_a_session_has_nothing_to_resume(world: World) -> None:
    conn, _ = await world.connect()
    await world.service.disconnect(conn)
    _, channel = await world.connect(resume=conn.resume_token)
    assert channel.sent[1] == refused(pk.Refusal.UNKNOWN, "unknown")


async def test_an_ended_session_cannot_be_resumed(world: World) -> None:
    conn, _ = await world.in_session()
    await world.service.handle_text(conn, END)
    await world.service.disconnect(conn)
    _, channel = await world.connect(resume=conn.resume_token)
    assert channel.sent[1] == refused(pk.Refusal.ENDED, "ended")
    assert len(world.ends()) == 1


async def test_the_grace_lapses_and_the_session_is_ended_once(world: World) -> None:
    conn, _ = await world.in_session()
    await world.service.disconnect(conn)
    world.clock.advance(GRACE - 1)
    assert await world.service.expire_parked() == 0
    world.clock.advance(1)
    assert await world.service.expire_parked() == 1
    assert await world.service.expire_parked() == 0
    # Ended with a bearer made from the learner's claims when the grace lapsed.
    assert world.ends() == [("end", "bearer[claims(tok-alice)]@1000030", "s1")]
    assert world.metrics.parking == ["parked", "expired"]
    _, channel = await world.connect(resume=conn.resume_token)
    assert channel.sent[1] == refused(pk.Refusal.LAPSED, "lapsed")


async def test_a_half_open_connection_is_taken_over_with_4007(world: World) -> None:
    old, old_channel = await world.in_session()
    new, channel = await world.connect(resume=old.resume_token)
    await settle()
    assert old_channel.closed_with == (4007, "Session resumed elsewhere")
    assert old.closed
    assert channel.types() == ["connected", "session_resumed"]
    assert new.state.session_id == "s1"
    assert world.ends() == []
    # The session is the new connection's: its own token resumes it next, the old one is used.
    await world.service.disconnect(new)
    _, again = await world.connect(resume=new.resume_token)
    assert again.types() == ["connected", "session_resumed"]


async def test_a_takeover_mid_turn_moves_the_turn_to_the_new_connection(world: World) -> None:
    old, _ = await world.mid_turn()
    new, channel = await world.connect(resume=old.resume_token)
    assert channel.sent[1].payload.state == "processing"  # type: ignore[union-attr]
    world.backend.release.set()
    await settle()
    assert channel.types()[2:] == ["transcription", "response", "audio"]
    assert new.state.phase is Phase.ACTIVE


async def test_the_oldest_kept_messages_are_dropped_and_the_client_told(world: World) -> None:
    conn, _ = await world.in_session()
    await world.service.disconnect(conn)
    big = p.encode_kept(p.error(p.Problem("x" * 400, p.ErrorCode.WRONG_STATE)))
    assert conn.session_key is not None
    for _ in range(3):  # 3 x ~430 bytes past the 1000-byte bound: the first is dropped
        await world.parking.keep(conn.session_key, [big], True)
    _, channel = await world.connect(resume=conn.resume_token)
    assert channel.types() == ["connected", "session_resumed", "error", "error", "error"]
    assert channel.sent[2] == p.Error(p.ErrorPayload(pk.dropped_message(1), "messages_dropped"))


async def test_a_lost_remote_turn_is_reported_after_the_backend_timeout() -> None:
    w = make_world(backend_timeout=0.01)
    conn, _ = await w.mid_turn()
    await w.service.disconnect(conn)
    # The turn dies without a word (as with its instance): nothing will ever be kept for it.
    assert conn.turn is not None
    conn.turn.cancel()
    new, channel = await w.connect(resume=conn.resume_token)
    assert new.state.phase is Phase.PROCESSING
    assert new.watchdog is not None
    await w.sleep.someone_asleep()
    assert channel.types() == ["connected", "session_resumed"]  # not before the timeout
    w.sleep.advance(0.01)  # the backend timeout passes (no slack)
    await new.watchdog
    assert channel.sent[-1] == TURN_LOST
    assert phase_of(new) is Phase.ACTIVE


async def test_without_a_grace_a_drop_ends_the_session() -> None:
    w = make_world(grace=0)
    conn, _ = await w.in_session()
    await w.service.disconnect(conn)
    assert w.ends() == [("end", "tok-alice", "s1")]
    _, channel = await w.connect(resume=conn.resume_token)
    assert channel.sent[1] == refused(pk.Refusal.DISABLED, "disabled")


async def test_a_shutdown_without_restart_parking_ends_every_session(world: World) -> None:
    _, live_channel = await world.in_session()
    gone, _ = await world.connect("bob")
    await world.service.handle_text(gone, START)
    await world.service.disconnect(gone)  # parked in memory: nobody could resume it after exit
    await world.service.drain()
    assert live_channel.closed_with == (1001, "Server shutting down")
    assert sorted(c[2] for c in world.ends()) == ["s1", "s2"]


async def test_a_restart_parks_sessions_with_1012_and_lets_turns_finish() -> None:
    w = make_world(restart_parks=True)
    events = asyncio.create_task(w.parking.run(w.service))
    await asyncio.sleep(0)
    conn, channel = await w.mid_turn()
    drain = asyncio.create_task(w.service.drain())
    await settle()
    assert channel.closed_with == (1012, "Service restart")
    assert not drain.done()  # waiting for the turn
    w.backend.release.set()
    await drain
    assert w.ends() == []
    # Another instance (the same store) resumes it: the turn's replies were parked.
    _, resumed = await make_world_on(w).connect(resume=conn.resume_token)
    assert resumed.types() == ["connected", "session_resumed", "transcription", "response", "audio"]
    events.cancel()


async def test_a_restart_turn_past_the_wait_is_reported_lost() -> None:
    w = make_world(restart_parks=True)
    conn, _ = await w.mid_turn()
    drain = asyncio.create_task(w.service.drain())
    await w.sleep.someone_asleep()  # the drain waits for the turn
    w.sleep.advance(1.0)  # shutdown_turn_wait 1 s passes, and the backend never answers
    await drain
    assert w.sleep.asked == [1.0]
    _, resumed = await make_world_on(w).connect(resume=conn.resume_token)
    assert resumed.types() == ["connected", "session_resumed", "error"]
    assert resumed.sent[2] == TURN_LOST
    assert w.ends() == []


def make_world_on(w: World) -> World:
    """A second instance on the same store, backend and clock."""
    sleep = ClockSleep(w.clock)
    service = gateway_on_fakes(
        ServiceLimits(max_message_bytes=4096, max_audio_bytes=1000, resume_grace=GRACE),
        backend=w.backend,
        clock=w.clock,
        decoder=w.decoder,
        metrics=w.metrics,
        parking=w.parking,
        sleep=sleep,
    )
    return World(service, w.backend, w.parking, w.clock, w.decoder, w.metrics, sleep)
