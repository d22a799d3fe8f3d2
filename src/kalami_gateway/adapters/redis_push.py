"""Push delivery across the cluster on Redis pub/sub.

``publish`` counts the user's connections in the directory and publishes in one script (so
the count is the one at publication); every instance's ``run`` loop receives every push and
hands it to its own connections of that user. The subscription survives Redis going away:
it is re-established with a short backoff, and one warning is logged per outage (a push
published while an instance is cut off does not reach that instance's connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
from redis.asyncio import Redis

from kalami_gateway.adapters.redis_directory import PUSH_SCRIPT, REDIS_FAILURES
from kalami_gateway.domain.ports import PushBus, PushUnavailable

log = logging.getLogger(__name__)

# How long one wait for a message lasts before the loop looks again (and pings when idle).
_POLL_SECONDS: Final = 1.0
_RETRY_SECONDS: Final = (0.2, 0.5, 1.0, 2.0)


class PushEnvelope(msgspec.Struct, frozen=True):
    userId: str  # the wire name
    payload: msgspec.Raw


_decode_envelope: Final = msgspec.json.Decoder(PushEnvelope)


class RedisPushBus(PushBus):
    def __init__(self, client: Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._channel = f"{prefix}push"
        self._publish = client.register_script(PUSH_SCRIPT)

    async def publish(self, user_id: str, payload: bytes) -> int:
        message = msgspec.json.encode(PushEnvelope(user_id, msgspec.Raw(payload)))
        try:
            count = await self._publish(args=[self._prefix, user_id, self._channel, message])
        except REDIS_FAILURES as exc:
            raise PushUnavailable(f"Redis is unreachable: {type(exc).__name__}") from None
        return int(count)

    async def run(self, deliver: Callable[[str, bytes], Awaitable[None]]) -> None:
        failures = 0
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                if failures:
                    log.warning("push_subscription_restored", extra={"channel": self._channel})
                failures = 0
                while True:
                    message = await pubsub.get_message(timeout=_POLL_SECONDS)
                    if message is None or message.get("type") != "message":
                        continue
                    await _hand_over(message["data"], deliver)
            except REDIS_FAILURES as exc:
                if failures == 0:
                    log.warning(
                        "push_subscription_lost",
                        extra={"channel": self._channel, "error": f"{type(exc).__name__}: {exc}"},
                    )
                failures += 1
            finally:
                with contextlib.suppress(*REDIS_FAILURES):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated upstream
            await asyncio.sleep(_RETRY_SECONDS[min(failures, len(_RETRY_SECONDS)) - 1])


async def _hand_over(data: bytes, deliver: Callable[[str, bytes], Awaitable[None]]) -> None:
    try:
        envelope = _decode_envelope.decode(data)
    except msgspec.DecodeError:
        log.warning("push_message_unreadable", extra={"bytes": len(data)})
        return
    await deliver(envelope.userId, bytes(envelope.payload))
