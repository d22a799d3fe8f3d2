"""The Redis client every adapter of the cluster uses (``redis_client``: a small pool that
queues, and timeouts that give up quickly), and what a call through it can fail with
(``REDIS_FAILURES``)."""

from __future__ import annotations

from typing import Final

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

# Seconds a Redis call may take before the instance treats Redis as away.
REDIS_TIMEOUT: Final = 2.0
REDIS_POOL_SIZE: Final = 32
# What a Redis call can fail with: the client's errors, and the socket's.
REDIS_FAILURES: Final = (RedisError, OSError, TimeoutError)


def redis_client(url: str) -> Redis:
    """A client that queues for one of a few connections and gives up quickly.

    A burst of connects (thousands of phones coming back after a network blip) must wait
    for a pooled connection, not fail: the default pool raises "Too many connections" past
    its size, which would read as an outage. An unreachable Redis must not hold a connect
    for long either: every wait is bounded by REDIS_TIMEOUT."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_POOL_SIZE,
        timeout=REDIS_TIMEOUT,
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_TIMEOUT,
        health_check_interval=30,
        # One immediate retry: a pooled connection Redis closed (a restart) is replaced;
        # more, with backoff (the client's default), would hold a connect for seconds.
        retry=Retry(NoBackoff(), 1),
    )
    return Redis.from_pool(pool)
