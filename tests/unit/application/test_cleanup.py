"""No backend session is left open: failed end calls are retried with backoff, a create that
answered too late has its session ended, and every backend call has a deadline."""

from __future__ import annotations

import asyncio
import json

import pytest

from kalami_gateway.application import Connection, ServiceLimits, SessionCleanup
from kalami_gateway.domain.ports import BackendError, BackendErrorKind, BackendHealth
from kalami_gateway.domain.retry import backoff_delays
from tests.unit.application.gateway_on_fakes import gateway_on_fakes
from tests.unit.fakes import (
    FakeBackend,
    FakeChannel,
    FakeClock,
    FakeCredentials,
    FakeDecoder,
    FakeMetrics,
)

START = json.dumps({"type": "start_session", "payload": {"profileId": "prof"}})
END = '{"type":"end_session"}'
DOWN = BackendError(BackendErrorKind.UNREACHABLE, "down")
GONE = BackendError(BackendErrorKind.REJECTED, "gone", status=404)
BROKEN = BackendError(BackendErrorKind.REJECTED, "broken", status=503)


def test_the_backoff_doubles_to_30_seconds_within_the_window() -> None:
    assert list(backoff_delays(300)) == [2, 4, 8, 16] + [30] * 9
    assert sum(backoff_delays(300)) == 300
    assert list(backoff_delays(1)) == []  # a window shorter than the first delay: no retry
    assert list(backoff_delays(0)) == []


class World:
    def __init__(self, backend_timeout: float = 5.0, window: float = 300.0) -> None:
        self.clock = FakeClock()
        self.backend = FakeBackend()
        self.metrics = FakeMetrics()
        self.decoder = FakeDecoder()
        self.slept: list[float] = []
        self.cleanup = SessionCleanup(
            self.backend,
            self.metrics,
            self.clock,
            backend_timeout,
            window,
            FakeCredentials(),
            sleep=self.sleep,
        )
        self.service = gateway_on_fakes(
            ServiceLimits(4096, 1000, backend_timeout=backend_timeout, end_retry_window=window),
            backend=self.backend,
            clock=self.clock,
            decoder=self.decoder,
            metrics=self.metrics,
            cleanup=self.cleanup,
        )

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.advance(seconds)
        await asyncio.sleep(0)

    async def connect(self) -> tuple[Connection, FakeChannel]:
        token = self.decoder.issue("tok", sub="alice", exp=self.clock.now() + 3600)
        channel = FakeChannel()
        conn = await self.service.open(channel, token)
        assert conn is not None
        return conn, channel

    async def settled(self) -> None:
        for _ in range(200):
            if not self.cleanup.pending:
                return
            await asyncio.sleep(0)
        raise AssertionError("background cleanup did not finish")


async def test_a_failed_end_is_answered_at_once_and_retried_until_it_succeeds() -> None:
    world = World()
    conn, channel = await world.connect()
    await world.service.handle_text(conn, START)
    world.backend.end_failures = [DOWN, BROKEN, DOWN]
    await world.service.handle_text(conn, END)
    assert channel.types()[-1] == "session_ended"  # before any retry
    await world.settled()
    assert world.slept == [2, 4, 8]
    # The client's own token first; each retry a bearer made from its claims at that moment.
    start = 1_000_000
    assert [c for c in world.backend.calls if c[0] == "end"] == [
        ("end", "tok", "s1"),
        ("end", f"bearer[claims(tok)]@{start + 2}", "s1"),
        ("end", f"bearer[claims(tok)]@{start + 6}", "s1"),
        ("end", f"bearer[claims(tok)]@{start + 14}", "s1"),
    ]
    assert world.metrics.cleanup == ["retry", "retry", "retry", "ended"]


async def test_a_refused_credential_is_final_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World()
    conn, _ = await world.connect()
    await world.service.handle_text(conn, START)
    world.backend.end_failures = [DOWN, BackendError(BackendErrorKind.REJECTED, "no", status=401)]
    await world.service.handle_text(conn, END)
    await world.settled()
    assert world.slept == [2]  # one retry, refused: no more
    assert world.metrics.cleanup == ["retry", "refused"]
    assert [r.message for r in caplog.records].count("backend_end_session_refused") == 1


async def test_an_end_after_the_token_expired_carries_a_bearer_from_its_claims() -> None:
    world = World()
    token = world.decoder.issue("short", sub="alice", exp=world.clock.now() + 20)
    conn = await world.service.open(FakeChannel(), token)
    assert conn is not None
    await world.service.handle_text(conn, START)
    world.clock.advance(25)  # expired, though not yet closed by the ticker
    await world.service.disconnect(conn, "token_expired")
    assert world.backend.calls[-1] == ("end", "bearer[claims(short)]@1000025", "s1")


async def test_a_session_the_backend_says_is_gone_is_not_retried() -> None:
    world = World()
    conn, _ = await world.connect()
    await world.service.handle_text(conn, START)
    world.backend.end_failures = [GONE]
    await world.service.handle_text(conn, END)
    await world.settled()
    assert world.slept == []
    world.backend.end_failures = [DOWN, GONE]  # gone on a retry: done as well
    await world.service.handle_text(conn, START)
    await world.service.handle_text(conn, END)
    await world.settled()
    assert world.metrics.cleanup == ["retry", "ended"]


async def test_the_retries_give_up_when_the_window_is_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World(window=20)
    conn, _ = await world.connect()
    await world.service.handle_text(conn, START)
    world.backend.fail_end = True
    await world.service.handle_text(conn, END)
    await world.settled()
    assert world.slept == [2, 4, 8]  # 14 s; the next (16) would pass 20
    assert world.metrics.cleanup == ["retry", "retry", "retry", "gave_up"]
    assert any(
        r.message == "backend_end_session_given_up" and getattr(r, "session_id", "") == "s1"
        for r in caplog.records
    )


async def test_a_disconnect_with_a_failing_end_is_retried_too() -> None:
    world = World()
    conn, _ = await world.connect()
    await world.service.handle_text(conn, START)
    world.backend.end_failures = [DOWN]
    await world.service.disconnect(conn)
    await world.settled()
    assert world.metrics.cleanup == ["retry", "ended"]


async def test_a_create_that_answers_after_the_deadline_has_its_session_ended() -> None:
    world = World(backend_timeout=0.05)
    conn, channel = await world.connect()
    world.backend.hold_creates = asyncio.Event()
    await world.service.handle_text(conn, START)  # waits 50 ms, then gives up
    assert channel.types()[-1] == "error"
    assert "timed out" in channel.wire()[-1]
    assert world.cleanup.pending == 1
    world.backend.hold_creates.set()  # the backend made it after all
    await world.settled()
    assert ("end", "bearer[claims(tok)]@1000000", "s1") in world.backend.calls
    assert world.metrics.cleanup == ["ended"]
    assert channel.types()[-1] == "error"  # the client heard nothing of it


async def test_a_turn_that_hangs_fails_by_the_deadline() -> None:
    world = World(backend_timeout=0.05)
    conn, channel = await world.connect()
    await world.service.handle_text(conn, START)
    world.backend.hold_turns = True
    await world.service.handle_text(conn, '{"type":"audio","payload":{"audio_base64":"AAAA"}}')
    assert conn.turn is not None
    await asyncio.wait_for(conn.turn, 2)
    assert channel.types()[-1] == "error"
    assert "timed out" in channel.wire()[-1]


async def test_shutdown_makes_a_last_attempt_at_every_session_still_to_end() -> None:
    world = World()
    conn, _ = await world.connect()
    await world.service.handle_text(conn, START)
    world.backend.end_failures = [DOWN]
    await world.service.handle_text(conn, END)  # retry scheduled, sleeping
    await asyncio.sleep(0)
    await world.service.drain()
    assert [c for c in world.backend.calls if c[0] == "end"] == [
        ("end", "tok", "s1"),
        ("end", "bearer[claims(tok)]@1000002", "s1"),
    ]
    assert world.metrics.cleanup[-1] == "ended"


async def test_readiness_is_bounded_by_the_backend_timeout() -> None:
    world = World(backend_timeout=0.05)

    async def never() -> BackendHealth:
        await asyncio.Event().wait()
        raise AssertionError

    world.backend.health = never  # type: ignore[method-assign]
    assert await asyncio.wait_for(world.service.backend_health(), 1) is BackendHealth.UNREACHABLE


class _BrokenCredentials(FakeCredentials):
    def bearer(self, claims: str, now: float) -> str:
        raise ValueError("the kept claims are not JSON")


async def test_unusable_claims_are_refused_once_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World()
    world.cleanup._credentials = _BrokenCredentials()
    world.cleanup.end_later("None", "s9")
    await world.settled()
    assert world.metrics.cleanup == ["retry", "refused"]
    assert [c for c in world.backend.calls if c[0] == "end"] == []
    assert [r.message for r in caplog.records].count("backend_end_session_no_credential") == 1
