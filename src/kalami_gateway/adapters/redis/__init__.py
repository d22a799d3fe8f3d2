"""The cluster on Redis: the connection directory (``RedisDirectory``, with its instance
lease), session parking across instances (``RedisParking``), push delivery to whichever
instance holds a user (``RedisPushBus``), the pub/sub listener they share, the Lua scripts
they run and the client factory (``redis_client``).

Only the lease's timings are defined here; the rest is imported on first use, so that a
process without ``REDIS_URL`` never loads redis-py (7 MiB of every such process, measured
in docs/operations.md, "Memory per worker")."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

# An instance's lease in the directory lapses this long after its last renewal; the app
# renews every directory (the in-memory one's renewal does nothing) this often.
LEASE_SECONDS: Final = 10.0
RENEW_SECONDS: Final = 3.0

if TYPE_CHECKING:
    from kalami_gateway.adapters.redis.client import REDIS_POOL_SIZE, redis_client
    from kalami_gateway.adapters.redis.directory import RedisDirectory, new_instance_id
    from kalami_gateway.adapters.redis.parking import RedisParking
    from kalami_gateway.adapters.redis.push import RedisPushBus

__all__ = [
    "LEASE_SECONDS",
    "REDIS_POOL_SIZE",
    "RENEW_SECONDS",
    "RedisDirectory",
    "RedisParking",
    "RedisPushBus",
    "new_instance_id",
    "redis_client",
]

# Each name imported on first use, from its module.
_MODULE_OF: Final = {
    "REDIS_POOL_SIZE": "client",
    "redis_client": "client",
    "RedisDirectory": "directory",
    "new_instance_id": "directory",
    "RedisParking": "parking",
    "RedisPushBus": "push",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
