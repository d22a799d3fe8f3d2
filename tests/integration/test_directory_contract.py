"""One contract for both connection directories: in memory (one process) and on Redis (the
real Redis, isolated by key prefix). Then what only a cluster can show: several instances,
leases that lapse, a Redis that loses everything, a Redis that goes away."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from kalami_gateway.adapters.memory.directory import InMemoryDirectory
from kalami_gateway.adapters.redis import RedisDirectory, redis_client
from kalami_gateway.domain.ports import ConnectionDirectory, ConnectionEntry, DirectoryCounts
from tests.integration.redis_fixtures import REDIS_URL, delete_prefix
from tests.integration.tcp_relay import TcpRelay

_ids = itertools.count(1)


def entry(user: str, connection: str | None = None) -> ConnectionEntry:
    return ConnectionEntry(connection or f"c{next(_ids)}", user, 2e9, 1.7e9)


@pytest.fixture(params=["memory", "redis"])
async def directory(
    request: pytest.FixtureRequest, redis: Redis, prefix: str
) -> AsyncIterator[ConnectionDirectory]:
    if request.param == "memory":
        yield InMemoryDirectory()
        return
    made = RedisDirectory(redis, prefix)
    await made.renew()
    yield made


async def test_register_count_and_unregister(directory: ConnectionDirectory) -> None:
    a1, a2, b1 = entry("alice"), entry("alice"), entry("bob")
    for e in (a1, a2, b1):
        assert await directory.register(e, cap=0)
    assert await directory.counts() == DirectoryCounts(1, 3, 2)
    assert await directory.connections_of("alice") == {a1.connection_id, a2.connection_id}
    await directory.unregister(a1)
    await directory.unregister(a2)
    assert await directory.connections_of("alice") == frozenset()
    assert await directory.counts() == DirectoryCounts(1, 1, 1)


async def test_every_call_is_idempotent(directory: ConnectionDirectory) -> None:
    a = entry("alice")
    assert await directory.register(a, cap=1)
    assert await directory.register(a, cap=1)  # already registered: still yes, counted once
    assert await directory.counts() == DirectoryCounts(1, 1, 1)
    await directory.unregister(a)
    await directory.unregister(a)
    await directory.unregister(entry("nobody"))
    assert await directory.counts() == DirectoryCounts(1, 0, 0)


async def test_the_cap_counts_open_connections(directory: ConnectionDirectory) -> None:
    first, second, third = entry("alice"), entry("alice"), entry("alice")
    assert await directory.register(first, cap=2)
    assert await directory.register(second, cap=2)
    assert not await directory.register(third, cap=2)
    assert await directory.connections_of("alice") == {first.connection_id, second.connection_id}
    assert await directory.register(entry("bob"), cap=2)  # another user is not affected
    await directory.unregister(first)
    assert await directory.register(third, cap=2)
    assert await directory.register(entry("alice"), cap=0)  # 0: no cap


async def test_concurrent_registers_never_pass_the_cap(directory: ConnectionDirectory) -> None:
    results = await asyncio.gather(*(directory.register(entry("alice"), cap=5) for _ in range(40)))
    assert results.count(True) == 5
    assert len(await directory.connections_of("alice")) == 5


async def test_leave_takes_the_instance_out(directory: ConnectionDirectory) -> None:
    await directory.register(entry("alice"), cap=0)
    await directory.leave()
    counts = await directory.counts()
    assert (counts.connections, counts.users) == (0, 0)
    assert directory.reachable()


# -- only a cluster ----------------------------------------------------------------------------


Make = Callable[..., RedisDirectory]


@pytest.fixture
def make(redis: Redis, prefix: str) -> Make:
    def build(lease_seconds: float = 10.0, client: Redis | None = None) -> RedisDirectory:
        return RedisDirectory(client or redis, prefix, lease_seconds=lease_seconds)

    return build


async def test_instances_share_one_view_and_one_cap(make: Make) -> None:
    a, b = make(), make()
    await a.renew()
    await b.renew()
    on_a, on_b = entry("alice"), entry("alice")
    assert await a.register(on_a, cap=0)
    assert await b.register(on_b, cap=0)
    assert await b.register(entry("bob"), cap=0)
    expected = DirectoryCounts(2, 3, 2)
    assert await a.counts() == expected
    assert await b.counts() == expected
    assert await a.connections_of("alice") == {on_a.connection_id, on_b.connection_id}
    assert not await a.register(entry("alice"), cap=2)  # b's connection counts on a


async def test_the_cap_holds_across_instances_under_concurrent_connects(make: Make) -> None:
    instances = [make() for _ in range(3)]
    for d in instances:
        await d.renew()
    attempts = [d.register(entry("alice"), cap=4) for _ in range(15) for d in instances]
    results = await asyncio.gather(*attempts)
    assert results.count(True) == 4
    assert len(await instances[0].connections_of("alice")) == 4


async def test_an_instance_that_stops_renewing_drops_out_with_its_connections(
    make: Make,
) -> None:
    survivor, doomed = make(lease_seconds=10), make(lease_seconds=0.3)
    await survivor.renew()
    await doomed.renew()
    await survivor.register(entry("alice"), cap=0)
    await doomed.register(entry("alice"), cap=0)
    await doomed.register(entry("bob"), cap=0)
    assert await survivor.counts() == DirectoryCounts(2, 3, 2)
    await asyncio.sleep(0.4)  # doomed never renews: killed, frozen, cut off
    assert await survivor.counts() == DirectoryCounts(1, 1, 1)
    assert len(await survivor.connections_of("alice")) == 1


async def test_entries_lost_by_redis_are_written_back_on_the_next_renewal(
    make: Make, redis: Redis, prefix: str
) -> None:
    a, b = make(), make()
    await a.renew()
    await b.renew()
    for user in ("alice", "alice", "bob"):
        await a.register(entry(user), cap=0)
    await b.register(entry("carol"), cap=0)
    await delete_prefix(redis, prefix)  # a Redis restart with nothing kept on disk
    assert (await a.counts()).connections == 0
    await a.renew()
    await b.renew()
    assert await a.counts() == DirectoryCounts(2, 4, 3)
    assert not await a.register(entry("alice"), cap=2)  # the cap counts them again


async def test_a_redis_that_goes_away_is_survived_and_caught_up_with(
    redis: Redis, prefix: str
) -> None:
    relay = await TcpRelay(6379).start()  # cut, it is a network partition
    port = relay.port
    client = redis_client(f"redis://127.0.0.1:{port}/0")
    try:
        flaky = RedisDirectory(client, prefix)
        watcher = RedisDirectory(redis, prefix)
        await flaky.renew()
        await watcher.renew()
        kept = entry("alice")
        await flaky.register(kept, cap=2)
        relay.cut()
        await flaky.renew()  # the outage is noticed
        assert not flaky.reachable()
        # Connections keep coming and going; the cap is judged on what this instance holds.
        during = entry("alice")
        assert await flaky.register(during, cap=2)
        assert not await flaky.register(entry("alice"), cap=2)
        await flaky.unregister(kept)
        assert await flaky.counts() == DirectoryCounts(1, 1, 1)  # its own figures
        relay.mend()
        await flaky.renew()  # back: writes its entries back
        assert flaky.reachable()
        assert await watcher.connections_of("alice") == {during.connection_id}
        assert await watcher.counts() == DirectoryCounts(2, 1, 1)
    finally:
        await client.aclose()
        await relay.close()


async def test_a_killed_redis_connection_is_replaced_transparently(
    make: Make, redis: Redis
) -> None:
    client = redis_client(REDIS_URL)
    try:
        d = make(client=client)
        await d.renew()
        await d.register(entry("alice"), cap=0)
        await redis.client_kill_filter(_type="normal", skipme=True)
        await d.register(entry("alice"), cap=0)
        assert (await d.counts()).connections == 2
        assert d.reachable()
    finally:
        await client.aclose()


async def test_a_burst_of_connects_is_queued_not_mistaken_for_an_outage(prefix: str) -> None:
    client = redis_client(REDIS_URL)  # the production client: a small, blocking pool
    try:
        d = RedisDirectory(client, prefix)
        await d.renew()
        burst = [entry(f"user{n % 400}") for n in range(2000)]  # 5 each: at the cap
        admitted = await asyncio.gather(*(d.register(e, cap=5) for e in burst))
        assert all(admitted)
        assert d.reachable()
        assert await d.counts() == DirectoryCounts(1, 2000, 400)
        assert not await d.register(entry("user7"), cap=5)
        await asyncio.gather(*(d.unregister(e) for e in burst))
        assert d.reachable()
        assert await d.counts() == DirectoryCounts(1, 0, 0)
    finally:
        await client.aclose()
