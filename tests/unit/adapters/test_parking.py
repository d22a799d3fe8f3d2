"""The parking rules (what is kept, its bounds, what a resume starts as) and the in-memory
store's expiry, on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kalami_gateway.adapters.memory.parking import InMemoryParking
from kalami_gateway.domain import parking as pk
from kalami_gateway.domain.session import Phase, SessionState
from tests.unit.fakes import FakeClock

RULES = pk.ParkingRules(grace=30.0, max_bytes=100, max_messages=4)


def kept_after(messages: list[bytes], rules: pk.ParkingRules = RULES) -> pk.Kept:
    kept = pk.Kept()
    for message in messages:
        kept = pk.keep(kept, message, rules)
    return kept


def test_messages_are_kept_in_order() -> None:
    kept = kept_after([b"a", b"bb", b"ccc"])
    assert kept == pk.Kept((b"a", b"bb", b"ccc"), 6, 0)


def test_past_the_message_bound_the_oldest_are_dropped_and_counted() -> None:
    kept = kept_after([b"1", b"2", b"3", b"4", b"5", b"6"])
    assert kept.messages == (b"3", b"4", b"5", b"6")
    assert kept.dropped == 2


def test_past_the_byte_bound_the_oldest_are_dropped() -> None:
    kept = kept_after([b"x" * 40, b"y" * 40, b"z" * 40])
    assert kept.messages == (b"y" * 40, b"z" * 40)
    assert (kept.size, kept.dropped) == (80, 1)


def test_a_message_larger_than_the_byte_bound_is_dropped_on_its_own() -> None:
    kept = kept_after([b"a", b"x" * 101])
    assert kept == pk.Kept((), 0, 2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=20))
def test_kept_is_the_longest_suffix_within_both_bounds(messages: list[bytes]) -> None:
    kept = kept_after(messages)
    n = len(kept.messages)
    assert kept.messages == tuple(messages[len(messages) - n :])
    assert n <= RULES.max_messages
    assert kept.size == sum(map(len, kept.messages)) <= RULES.max_bytes
    assert kept.dropped == len(messages) - n
    if n < len(messages):  # one more (older) message would break a bound
        longer = messages[len(messages) - n - 1 :]
        assert len(longer) > RULES.max_messages or sum(map(len, longer)) > RULES.max_bytes


@pytest.mark.parametrize(
    ("phase", "parked"),
    [
        (Phase.ACTIVE, "active"),
        (Phase.RECORDING, "active"),  # the recording is dropped: the client records again
        (Phase.PROCESSING, "processing"),  # the turn keeps running
    ],
)
def test_what_a_parked_session_resumes_as(phase: Phase, parked: str) -> None:
    assert pk.parked_phase(SessionState(phase, "s1", "prof", None)) == parked


def test_a_resumed_state_carries_the_session_on() -> None:
    record = pk.SessionRecord("k", "alice", "s1", "prof", "food", "tok")
    assert pk.resumed_state(record, "processing") == SessionState(
        Phase.PROCESSING, "s1", "prof", "food"
    )


RECORD = pk.SessionRecord("key-1", "alice", "s1", "prof", None, "bearer")


async def parked_store(clock: FakeClock) -> InMemoryParking:
    store = InMemoryParking(RULES, clock)
    await store.hold("resume-1", RECORD, "conn-1")
    assert await store.park("key-1", "conn-1", "active", "bearer-2")
    return store


async def test_a_parked_session_lapses_after_the_grace_once() -> None:
    clock = FakeClock()
    store = await parked_store(clock)
    clock.advance(29.9)
    assert await store.take_lapsed() == []
    assert await store.parked() == 1
    clock.advance(0.1)
    lapsed = await store.take_lapsed()
    assert [(r.session_id, r.claims) for r in lapsed] == [("s1", "bearer-2")]  # the latest bearer
    assert await store.take_lapsed() == []
    assert await store.parked() == 0
    refused = await store.claim("resume-1", "alice", "resume-2", "conn-2")
    assert refused == pk.ResumeRefused(pk.Refusal.LAPSED)


async def test_a_held_session_never_lapses() -> None:
    clock = FakeClock()
    store = InMemoryParking(RULES, clock)
    await store.hold("resume-1", RECORD, "conn-1")
    clock.advance(3600)
    assert await store.take_lapsed() == []


async def test_a_claimed_session_does_not_lapse_and_its_token_is_used() -> None:
    clock = FakeClock()
    store = await parked_store(clock)
    claim = await store.claim("resume-1", "alice", "resume-2", "conn-2")
    assert isinstance(claim, pk.Resumed)
    clock.advance(60)
    assert await store.take_lapsed() == []
    assert await store.claim("resume-1", "alice", "resume-3", "conn-3") == pk.ResumeRefused(
        pk.Refusal.USED
    )


async def test_tombstones_are_forgotten_after_an_hour() -> None:
    clock = FakeClock()
    store = await parked_store(clock)
    await store.claim("resume-1", "alice", "resume-2", "conn-2")
    clock.advance(pk.TOMBSTONE_SECONDS + 1)
    await store.take_lapsed()
    assert await store.claim("resume-1", "alice", "resume-3", "conn-3") == pk.ResumeRefused(
        pk.Refusal.UNKNOWN
    )
