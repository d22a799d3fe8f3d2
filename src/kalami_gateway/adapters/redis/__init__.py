"""The cluster on Redis: the connection directory (``RedisDirectory``, with its instance
lease), session parking across instances (``RedisParking``), push delivery to whichever
instance holds a user (``RedisPushBus``), the pub/sub listener they share, the Lua scripts
they run and the client factory (``redis_client``)."""

from kalami_gateway.adapters.redis.client import REDIS_POOL_SIZE, redis_client
from kalami_gateway.adapters.redis.directory import RENEW_SECONDS, RedisDirectory, new_instance_id
from kalami_gateway.adapters.redis.parking import RedisParking
from kalami_gateway.adapters.redis.push import RedisPushBus

__all__ = [
    "REDIS_POOL_SIZE",
    "RENEW_SECONDS",
    "RedisDirectory",
    "RedisParking",
    "RedisPushBus",
    "new_instance_id",
    "redis_client",
]
