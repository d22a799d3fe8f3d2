"""Each connection's life as one stage: open, then closed, or parked with its turn running on
detached until the turn is over (or its session lapses)."""

from __future__ import annotations

import asyncio
import json

from kalami_gateway.adapters.memory.parking import InMemoryParking
from kalami_gateway.application import Connection, GatewayService, ServiceLimits, Stage
from kalami_gateway.domain import parking as pk
from tests.unit.application.gateway_on_fakes import gateway_on_fakes
from tests.unit.fakes import FakeBackend, FakeChannel, FakeClock, FakeDecoder, FakeMetrics

START = json.dumps({"type": "start_session", "payload": {"profileId": "prof"}})
START_REC = json.dumps({"type": "start_recording", "payload": {"format": "wav"}})
STOP_REC = '{"type":"stop_recording"}'
GRACE = 30.0


class World:
    def __init__(self, grace: float = GRACE) -> None:
        self.clock = FakeClock()
        self.decoder = FakeDecoder()
        self.backend = FakeBackend()
        self.parking = InMemoryParking(pk.ParkingRules(grace=grace, max_bytes=1000), self.clock)
        self.service: GatewayService = gateway_on_fakes(
            ServiceLimits(max_message_bytes=4096, max_audio_bytes=1000, resume_grace=grace),
            backend=self.backend,
            clock=self.clock,
            decoder=self.decoder,
            metrics=FakeMetrics(),
            parking=self.parking,
        )

    async def in_session(self) -> Connection:
        token = self.decoder.issue("tok", sub="alice", exp=self.clock.now() + 3600)
        conn = await self.service.open(FakeChannel(), token)
        assert conn is not None
        await self.service.handle_text(conn, START)
        return conn

    async def mid_turn(self) -> Connection:
        self.backend.hold_turns = True
        conn = await self.in_session()
        await self.service.handle_text(conn, START_REC)
        await self.service.handle_binary(conn, b"\x01" * 10)
        await self.service.handle_text(conn, STOP_REC)
        await self.backend.turn_started.wait()
        return conn


def stage_of(conn: Connection) -> Stage:
    return conn.stage  # read afresh (mypy would keep an earlier assert's narrowing)


async def test_a_connection_is_open_until_it_goes_then_closed() -> None:
    world = World(grace=0)
    conn = await world.in_session()
    assert conn.stage is Stage.OPEN
    assert not conn.closed
    await world.service.disconnect(conn)
    assert stage_of(conn) is Stage.CLOSED
    assert conn.closed


async def test_a_parked_session_without_a_turn_leaves_its_connection_closed() -> None:
    world = World()
    conn = await world.in_session()
    await world.service.disconnect(conn, "connection_lost")
    assert conn.stage is Stage.CLOSED
    assert await world.service.parked_sessions() == 1


async def test_a_turn_in_flight_runs_on_detached_until_its_reply_is_kept() -> None:
    world = World()
    conn = await world.mid_turn()
    await world.service.disconnect(conn, "connection_lost")
    assert conn.stage is Stage.DETACHED
    assert conn.closed
    world.backend.release.set()
    assert conn.turn is not None
    await conn.turn
    assert stage_of(conn) is Stage.CLOSED


async def test_a_detached_turn_is_cancelled_when_its_session_lapses() -> None:
    world = World()
    conn = await world.mid_turn()
    await world.service.disconnect(conn, "connection_lost")
    turn = conn.turn
    assert turn is not None
    world.clock.advance(GRACE)
    assert await world.service.expire_parked() == 1
    assert stage_of(conn) is Stage.CLOSED
    await asyncio.sleep(0)  # the cancellation lands
    assert turn.cancelled()
