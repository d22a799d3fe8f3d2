"""One Redis pub/sub channel listened to for as long as the instance runs.

The subscription survives Redis going away: it is re-established with a short backoff, and
one warning is logged per outage (what is published while an instance is cut off does not
reach it). Used by the push bus and by the parking store's per-instance channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from redis.asyncio import Redis

from kalami_gateway.adapters.redis.client import REDIS_FAILURES

log = logging.getLogger(__name__)

# How long one wait for a message lasts before the loop looks again (and pings when idle).
_POLL_SECONDS: Final = 1.0
_RETRY_SECONDS: Final = (0.2, 0.5, 1.0, 2.0)


async def listen(client: Redis, channel: str, handle: Callable[[bytes], Awaitable[None]]) -> None:
    """Hand every message published on ``channel`` to ``handle``, until cancelled."""
    failures = 0
    while True:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            if failures:
                log.warning("subscription_restored", extra={"channel": channel})
            failures = 0
            while True:
                message = await pubsub.get_message(timeout=_POLL_SECONDS)
                if message is None or message.get("type") != "message":
                    continue
                await handle(message["data"])
        except REDIS_FAILURES as exc:
            if failures == 0:
                log.warning(
                    "subscription_lost",
                    extra={"channel": channel, "error": f"{type(exc).__name__}: {exc}"},
                )
            failures += 1
        finally:
            with contextlib.suppress(*REDIS_FAILURES):
                await pubsub.aclose()
        await asyncio.sleep(_RETRY_SECONDS[min(failures, len(_RETRY_SECONDS)) - 1])
