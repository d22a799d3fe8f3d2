"""Push delivery across the cluster on Redis pub/sub.

``publish`` counts the user's connections in the directory and publishes in one script (so
the count is the one at publication); every instance's ``run`` loop receives every push and
hands it to its own connections of that user. The subscription survives Redis going away:
it is re-established with a short backoff, and one warning is logged per outage (a push
published while an instance is cut off does not reach that instance's connections).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
from redis.asyncio import Redis

from kalami_gateway.adapters.redis.channel import listen
from kalami_gateway.adapters.redis.client import REDIS_FAILURES
from kalami_gateway.adapters.redis.scripts import PUSH_SCRIPT
from kalami_gateway.domain.ports import PushBus, PushUnavailable

log = logging.getLogger(__name__)


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
        async def hand_over(data: bytes) -> None:
            try:
                envelope = _decode_envelope.decode(data)
            except msgspec.DecodeError:
                log.warning("push_message_unreadable", extra={"bytes": len(data)})
                return
            await deliver(envelope.userId, bytes(envelope.payload))

        await listen(self._client, self._channel, hand_over)
