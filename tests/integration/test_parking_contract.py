"""One contract for both parking stores: in memory (one process) and on Redis (the real Redis,
isolated by key prefix). Then what only a cluster can show: claims racing from two instances,
expiry handed out once across instances, a holder instance that dies."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import msgspec
import pytest
from redis.asyncio import Redis

from kalami_gateway.adapters.clock import SystemClock
from kalami_gateway.adapters.memory.parking import InMemoryParking
from kalami_gateway.adapters.redis import RedisDirectory, RedisParking, redis_client
from kalami_gateway.domain import parking as pk
from kalami_gateway.domain.ports import ParkingEvents, ParkingUnavailable, SessionParking
from tests.integration.conftest import eventually

RULES = pk.ParkingRules(grace=30.0, max_bytes=1000, max_messages=4)
_keys = itertools.count(1)


@dataclass
class Recorder(ParkingEvents):
    forwards: list[tuple[str, str, list[bytes], bool]] = field(default_factory=list)
    releases: list[tuple[str, str]] = field(default_factory=list)

    async def forwarded(
        self, connection_id: str, key: str, messages: Sequence[bytes], turn_done: bool
    ) -> None:
        self.forwards.append((connection_id, key, list(messages), turn_done))

    async def release(self, connection_id: str, key: str) -> None:
        self.releases.append((connection_id, key))


@dataclass
class Site:
    """One instance's store, what it was handed, and its lease (Redis)."""

    store: SessionParking
    events: Recorder
    directory: RedisDirectory | None = None


def record(user: str = "alice") -> pk.SessionRecord:
    n = next(_keys)
    return pk.SessionRecord(f"key-{n}", user, f"s{n}", "prof", "food", "bearer-1")


class Sites:
    def __init__(self, kind: str, redis: Redis, prefix: str) -> None:
        self.kind = kind
        self._redis = redis
        self._prefix = prefix
        self._tasks: list[asyncio.Task[None]] = []
        self._memory: InMemoryParking | None = None

    async def new(
        self, rules: pk.ParkingRules = RULES, lease_seconds: float = 10.0, listen: bool = True
    ) -> Site:
        events = Recorder()
        store: SessionParking
        if self.kind == "memory":
            store = InMemoryParking(rules, SystemClock())
            site = Site(store, events)
        else:
            directory = RedisDirectory(self._redis, self._prefix, lease_seconds=lease_seconds)
            await directory.renew()  # the lease says the instance is alive
            store = RedisParking(self._redis, self._prefix, directory.instance_id, rules)
            site = Site(store, events, directory)
        if listen:
            self._tasks.append(asyncio.create_task(site.store.run(events)))
            await asyncio.sleep(0.05)  # subscribed
        return site

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture(params=["memory", "redis"])
async def sites(request: pytest.FixtureRequest, redis: Redis, prefix: str) -> AsyncIterator[Sites]:
    made = Sites(request.param, redis, prefix)
    yield made
    await made.close()


@pytest.fixture
async def redis_sites(redis: Redis, prefix: str) -> AsyncIterator[Sites]:
    made = Sites("redis", redis, prefix)
    yield made
    await made.close()


async def parked(site: Site, rec: pk.SessionRecord, resume: str = "t1") -> None:
    await site.store.hold(resume, rec, "conn-1")
    assert await site.store.park(rec.key, "conn-1", "processing", "bearer-2")


async def test_a_parked_session_is_claimed_with_its_state(sites: Sites) -> None:
    site = await sites.new()
    rec = record()
    await parked(site, rec)
    assert await site.store.parked() == 1
    claim = await site.store.claim("t1", "alice", "t2", "conn-2")
    assert claim == pk.Resumed(
        pk.SessionRecord(rec.key, "alice", rec.session_id, "prof", "food", "bearer-2"),
        "processing",
    )
    assert await site.store.parked() == 0


async def test_a_session_resumes_with_the_reply_audio_form_it_was_started_with(
    sites: Sites,
) -> None:
    site = await sites.new()
    rec = msgspec.structs.replace(record(), reply_audio="binary")
    await parked(site, rec)
    claim = await site.store.claim("t1", "alice", "t2", "conn-2")
    assert isinstance(claim, pk.Resumed)
    assert claim.record.reply_audio == "binary"
    assert await site.store.park(rec.key, "conn-2", "active", None)  # parked again, and again
    claim = await site.store.claim("t2", "alice", "t3", "conn-3")
    assert isinstance(claim, pk.Resumed)
    assert claim.record == msgspec.structs.replace(rec, claims="bearer-2")


async def test_a_record_written_before_the_reply_audio_form_resumes_as_json(
    redis_sites: Sites, redis: Redis, prefix: str
) -> None:
    site = await redis_sites.new()
    rec = msgspec.structs.replace(record(), reply_audio="binary")
    await parked(site, rec)
    # As a gateway before the option wrote it (rolling upgrade): four items, no form.
    meta = msgspec.json.encode(["alice", rec.session_id, "prof", "food"])
    await redis.hset(f"{prefix}rs:{rec.key}", "meta", meta)
    claim = await site.store.claim("t1", "alice", "t2", "conn-2")
    assert isinstance(claim, pk.Resumed)
    assert claim.record.reply_audio == "json"


async def test_what_a_parked_session_is_sent_is_kept_in_order_and_bounded(sites: Sites) -> None:
    site = await sites.new()
    rec = record()
    await parked(site, rec)
    await site.store.keep(rec.key, [b"m1", b"m2", b"m3"], False)
    await site.store.keep(rec.key, [b"m4", b"m5", b"m6"], True)  # 6 past the bound of 4
    claim = await site.store.claim("t1", "alice", "t2", "conn-2")
    assert claim == pk.Resumed(
        pk.SessionRecord(rec.key, "alice", rec.session_id, "prof", "food", "bearer-2"),
        "active",  # the turn is over
        (b"m3", b"m4", b"m5", b"m6"),
        2,
    )
    assert site.events.forwards == []


async def test_the_byte_bound_is_the_domain_rule(sites: Sites) -> None:
    site = await sites.new()
    rec = record()
    await parked(site, rec)
    messages = [b"a" * 300, b"b" * 500, b"c" * 400, b"d" * 1001]
    await site.store.keep(rec.key, messages, True)
    claim = await site.store.claim("t1", "alice", "t2", "conn-2")
    assert isinstance(claim, pk.Resumed)
    expected = pk.Kept()
    for message in messages:
        expected = pk.keep(expected, message, RULES)
    assert (claim.kept, claim.dropped) == (expected.messages, expected.dropped)


async def test_messages_for_a_held_session_are_forwarded_to_its_holder(sites: Sites) -> None:
    site = await sites.new()
    rec = record()
    await site.store.hold("t1", rec, "conn-1")
    await site.store.keep(rec.key, [b'{"type":"pong"}', b"two"], True)
    await eventually(lambda: site.events.forwards)
    assert site.events.forwards == [("conn-1", rec.key, [b'{"type":"pong"}', b"two"], True)]


async def test_after_a_claim_messages_go_to_the_new_holder(sites: Sites) -> None:
    site = await sites.new()
    rec = record()
    await parked(site, rec)
    await site.store.claim("t1", "alice", "t2", "conn-2")
    await site.store.keep(rec.key, [b"late"], True)
    await eventually(lambda: site.events.forwards)
    assert site.events.forwards == [("conn-2", rec.key, [b"late"], True)]


async def test_a_held_session_is_claimed_only_after_its_holder_lets_go(sites: Sites) -> None:
    site = await sites.new()
    rec = record()
    await site.store.hold("t1", rec, "conn-1")
    claim = await site.store.claim("t1", "alice", "t2", "conn-2")
    assert isinstance(claim, pk.HeldElsewhere)
    assert (claim.holder.connection_id, claim.key) == ("conn-1", rec.key)
    await site.store.ask_release(claim.holder, claim.key)
    await eventually(lambda: site.events.releases)
    assert site.events.releases == [("conn-1", rec.key)]
    assert await site.store.park(rec.key, "conn-1", "active", None)
    claim = await site.store.claim("t1", "alice", "t2", "conn-2")
    assert isinstance(claim, pk.Resumed)
    assert claim.record.claims == "bearer-1"  # None kept the held bearer


async def test_past_the_users_cap_the_oldest_parked_sessions_lapse_at_once(
    sites: Sites,
) -> None:
    site = await sites.new(pk.ParkingRules(grace=30.0, max_bytes=1000, max_parked_per_user=2))
    alices = [record("alice") for _ in range(4)]
    bob = record("bob")
    for n, rec in enumerate([*alices[:3], bob]):
        await site.store.hold(f"t{n}", rec, "conn-1")
        assert await site.store.park(rec.key, "conn-1", "active", None)
        await asyncio.sleep(0.002)  # parked in this order
    lapsed = await site.store.take_lapsed()  # long before the grace
    assert [r.key for r in lapsed] == [alices[0].key]
    # A resumed session no longer counts; the fourth parks and the cap holds at two.
    assert isinstance(await site.store.claim("t1", "alice", "t1b", "conn-2"), pk.Resumed)
    await site.store.hold("t9", alices[3], "conn-1")
    assert await site.store.park(alices[3].key, "conn-1", "active", None)
    assert await site.store.take_lapsed() == []
    assert await site.store.parked() == 3  # alice's 3rd and 4th, bob's


async def test_only_the_holder_parks(sites: Sites) -> None:
    site = await sites.new()
    rec = record()
    await site.store.hold("t1", rec, "conn-1")
    assert not await site.store.park(rec.key, "conn-9", "active", None)
    assert not await site.store.park("no-such-key", "conn-1", "active", None)
    assert await site.store.parked() == 0


async def test_refusals(sites: Sites) -> None:
    site = await sites.new()
    rec = record("alice")
    await parked(site, rec)
    unknown = await site.store.claim("never-issued", "alice", "x", "c")
    assert unknown == pk.ResumeRefused(pk.Refusal.UNKNOWN)
    other = await site.store.claim("t1", "mallory", "x", "c")
    assert other == pk.ResumeRefused(pk.Refusal.OTHER_USER)
    assert await site.store.parked() == 1  # untouched: its owner still resumes it
    assert isinstance(await site.store.claim("t1", "alice", "t2", "conn-2"), pk.Resumed)
    used = await site.store.claim("t1", "alice", "t3", "conn-3")
    assert used == pk.ResumeRefused(pk.Refusal.USED)
    await site.store.forget(rec.key)
    ended = await site.store.claim("t2", "alice", "t4", "conn-4")
    assert ended == pk.ResumeRefused(pk.Refusal.ENDED)
    await site.store.keep(rec.key, [b"after the end"], True)  # gone: dropped, no error
    assert site.events.forwards == []


async def test_a_lapsed_session_is_taken_once(sites: Sites) -> None:
    site = await sites.new(pk.ParkingRules(grace=0.2, max_bytes=1000))
    rec = record()
    await parked(site, rec)
    assert await site.store.take_lapsed() == []
    await asyncio.sleep(0.3)
    results = await asyncio.gather(*(site.store.take_lapsed() for _ in range(10)))
    taken = [r for batch in results for r in batch]
    assert [(r.key, r.session_id, r.claims) for r in taken] == [
        (rec.key, rec.session_id, "bearer-2")
    ]
    lapsed = await site.store.claim("t1", "alice", "t2", "conn-2")
    assert lapsed == pk.ResumeRefused(pk.Refusal.LAPSED)


async def test_the_store_hands_over_nothing_or_everything_at_exit(sites: Sites) -> None:
    site = await sites.new()
    held, waiting = record(), record()
    await site.store.hold("t1", held, "conn-1")
    await parked(site, waiting, "t2")
    left = await site.store.leave()
    if sites.kind == "memory":
        assert sorted(r.key for r in left) == sorted([held.key, waiting.key])
    else:
        assert left == []  # another instance resumes them


# --- only a cluster ------------------------------------------------------------------------


async def test_two_instances_race_for_one_token_and_one_wins(redis_sites: Sites) -> None:
    a, b = await redis_sites.new(), await redis_sites.new()
    rec = record()
    await parked(a, rec)
    claims = await asyncio.gather(
        *(
            site.store.claim("t1", "alice", f"new-{n}", f"conn-{n}")
            for n, site in enumerate([a, b] * 10)
        )
    )
    assert sum(isinstance(c, pk.Resumed) for c in claims) == 1
    assert all(
        c == pk.ResumeRefused(pk.Refusal.USED) for c in claims if not isinstance(c, pk.Resumed)
    )


async def test_a_turn_on_one_instance_reaches_the_claimer_on_another(redis_sites: Sites) -> None:
    a, b = await redis_sites.new(), await redis_sites.new()
    rec = record()
    await parked(a, rec)
    assert isinstance(await b.store.claim("t1", "alice", "t2", "conn-b"), pk.Resumed)
    await a.store.keep(rec.key, [b"reply"], True)  # the turn ran on a
    await eventually(lambda: b.events.forwards)
    assert b.events.forwards == [("conn-b", rec.key, [b"reply"], True)]
    assert a.events.forwards == []


async def test_expiry_is_handed_out_once_across_instances(redis_sites: Sites) -> None:
    rules = pk.ParkingRules(grace=0.2, max_bytes=1000)
    sites = [await redis_sites.new(rules) for _ in range(3)]
    records = [record() for _ in range(30)]
    for n, rec in enumerate(records):
        await parked(sites[n % 3], rec, f"t{n}")
    await asyncio.sleep(0.3)
    results = await asyncio.gather(*(s.store.take_lapsed() for s in sites for _ in range(5)))
    taken = sorted(r.key for batch in results for r in batch)
    assert taken == sorted(r.key for r in records)


async def test_a_dead_holders_sessions_are_claimable_and_lapse(redis_sites: Sites) -> None:
    rules = pk.ParkingRules(grace=0.3, max_bytes=1000)
    doomed = await redis_sites.new(rules, lease_seconds=0.3)
    alive = await redis_sites.new(rules)
    resumable, forgotten = record(), record()
    await doomed.store.hold("t1", resumable, "conn-1")
    await doomed.store.hold("t2", forgotten, "conn-2")
    assert isinstance(await alive.store.claim("t1", "alice", "x", "c"), pk.HeldElsewhere)
    await asyncio.sleep(0.4)  # the doomed instance stops renewing: its lease lapses
    claim = await alive.store.claim("t1", "alice", "t3", "conn-3")
    assert isinstance(claim, pk.Resumed)
    assert claim.phase == "active"  # a turn it ran died with it
    assert await alive.store.take_lapsed() == []  # the other one starts its grace now
    assert await alive.store.parked() == 1
    await asyncio.sleep(0.4)
    assert [r.key for r in await alive.store.take_lapsed()] == [forgotten.key]


async def test_an_unreachable_redis_raises_parking_unavailable() -> None:
    client = redis_client("redis://127.0.0.1:9/0")
    store = RedisParking(client, "nowhere:", "i1", RULES)
    try:
        with pytest.raises(ParkingUnavailable):
            await store.claim("t1", "alice", "t2", "c")
        with pytest.raises(ParkingUnavailable):
            await store.parked()
        with pytest.raises(ParkingUnavailable):
            await store.ask_release(pk.Holder("i2", "c"), "k")
    finally:
        await client.aclose()


async def test_resume_tokens_are_not_stored_as_they_are(redis: Redis, prefix: str) -> None:
    sites = Sites("redis", redis, prefix)
    site = await sites.new(listen=False)
    await parked(site, record(), "the-secret-token")
    keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
    values = [await redis.get(k) for k in keys if await redis.type(k) == b"string"]
    assert keys
    assert not any(b"the-secret-token" in k for k in keys)
    assert not any(v and b"the-secret-token" in v for v in values)


async def test_junk_on_an_instance_channel_is_ignored_and_the_channel_lives_on(
    redis_sites: Sites, redis: Redis, prefix: str
) -> None:
    site = await redis_sites.new()
    assert site.directory is not None
    channel = f"{prefix}inst:{site.directory.instance_id}"
    for junk in (b"", b"F", b"Fconn", b"Fconn\nkey", b"R", b"Rconn", b"X\n\n\n", bytes(range(256))):
        await redis.publish(channel, junk)
    rec = record()
    await site.store.hold("t1", rec, "conn-1")
    await site.store.keep(rec.key, [b"after the junk"], True)
    await eventually(lambda: site.events.forwards)
    assert site.events.forwards == [("conn-1", rec.key, [b"after the junk"], True)]
    assert site.events.releases == []
