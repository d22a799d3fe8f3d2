"""The real Redis at 127.0.0.1:6379 (every machine of this project runs one), isolated per test
by key prefix. Not reachable: the test fails, loudly — it is never skipped."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

REDIS_URL = "redis://127.0.0.1:6379/0"


async def connected_client() -> Redis:
    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:  # any failure here means the same thing
        await client.aclose()
        pytest.fail(
            f"Redis is not reachable at {REDIS_URL} ({type(exc).__name__}: {exc}); the cluster "
            "tests need it. Start it: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 "
            '--save "" --appendonly no',
            pytrace=False,
        )
    return client


async def delete_prefix(client: Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
    if keys:
        await client.delete(*keys)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = await connected_client()
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis: Redis) -> AsyncIterator[str]:
    """A key prefix no other test (or tenant) uses; its keys are deleted afterwards."""
    value = f"kalami-test:{uuid.uuid4().hex[:12]}:"
    yield value
    await delete_prefix(redis, value)
