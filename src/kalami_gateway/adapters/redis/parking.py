"""Resumable sessions on Redis: parked by one instance, claimed on any, ended once.

Keys (under the prefix ``p``, beside the directory's, whose ``p instances`` leases say which
holders are alive):

- ``p rs:<key>``          hash: the session (``user``, ``meta``, ``claims``, ``phase``, its
                          holder's ``inst`` and ``conn`` — empty while parked —, ``grace`` ms,
                          ``tok`` its current resume token's hash, ``dropped``, ``bytes``)
- ``p rs:<key>:kept``     list: messages kept while parked, oldest first
- ``p rt:<token hash>``   string: the session key a resume token resumes, or a tombstone
                          (``!used``, ``!lapsed``, ``!ended``) so a late resume is told why
- ``p parked``            sorted set: parked session key -> grace deadline (ms, Redis's clock)
- ``p pu:<user>``         sorted set: that user's parked session keys by when they parked
                          (the per-user cap of parked sessions)
- ``p held:<instance>``   set of the session keys that instance's connections hold
- ``p holders``           set of instances that hold sessions
- channel ``p inst:<instance>``: a turn's messages for a connection of that instance
  (``F<conn>\\n<key>\\n<done>\\n<message>\\n...``) and release requests (``R<conn>\\n<key>``)

Every step is one script (``parking_scripts.py``), so a claim, a keep and an expiry never
interleave: a lapsed session is handed to exactly one instance; a turn's messages are either
kept (and returned by the claim) or forwarded to the claimer, never both. Sessions held by an
instance whose lease lapsed (killed) are parked by the next sweep, so their backend sessions
get ended too.

Redis may lose everything (a restart without persistence). Each instance keeps a mirror of
the sessions it holds and of those it parked (until their grace is over), and a mark
``p mark:<instance>``; the sweep notices the mark is gone and writes the mirror back: held
sessions as they are, parked ones with the grace they had left unless another instance has
written the session back first (a holder's record wins). A connection that goes away with a
session Redis no longer knows has it ended at once (``park`` raises ``ParkingUnavailable``).
Resume tokens are stored as SHA-256 hashes, and of the learner's token only its claims (to
end the session with): the store never holds a token that works.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any, Final

import msgspec
from redis.asyncio import Redis

from kalami_gateway.adapters.redis import parking_scripts
from kalami_gateway.adapters.redis.channel import listen
from kalami_gateway.adapters.redis.client import REDIS_FAILURES
from kalami_gateway.domain import parking as pk
from kalami_gateway.domain.ports import ParkingEvents, ParkingUnavailable, SessionParking

log = logging.getLogger(__name__)

# At most this many lapsed sessions are taken by one sweep (the next sweep takes the rest).
SWEEP_BATCH: Final = 100

_REFUSALS: Final = {
    b"unknown": pk.Refusal.UNKNOWN,
    b"used": pk.Refusal.USED,
    b"lapsed": pk.Refusal.LAPSED,
    b"ended": pk.Refusal.ENDED,
    b"other_user": pk.Refusal.OTHER_USER,
}


class _Meta(msgspec.Struct, frozen=True, array_like=True):
    user_id: str
    session_id: str
    profile_id: str
    topic: str | None
    # Added later, last: a gateway that predates it reads the array without it, and a record
    # it wrote (four items) reads back with the default.
    reply_audio: str = "json"


_encode_meta: Final = msgspec.json.Encoder().encode
_decode_meta: Final = msgspec.json.Decoder(_Meta).decode


def _meta_of(record: pk.SessionRecord) -> bytes:
    return _encode_meta(
        _Meta(
            record.user_id, record.session_id, record.profile_id, record.topic, record.reply_audio
        )
    )


def _record_of(key: Any, meta: bytes, claims: Any) -> pk.SessionRecord:
    m = _decode_meta(meta)
    return pk.SessionRecord(
        _text(key),
        m.user_id,
        m.session_id,
        m.profile_id,
        m.topic,
        _text(claims),
        "binary" if m.reply_audio == "binary" else "json",
    )


def token_hash(resume_token: str) -> str:
    return hashlib.sha256(resume_token.encode()).hexdigest()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Mirror:
    """A session as this instance last wrote it: held (``connection_id``) or parked by it
    (``deadline``, monotonic)."""

    __slots__ = ("connection_id", "deadline", "record", "token_hash")

    def __init__(
        self,
        record: pk.SessionRecord,
        token_hash: str,
        connection_id: str | None,
        deadline: float | None = None,
    ) -> None:
        self.record = record
        self.token_hash = token_hash
        self.connection_id = connection_id
        self.deadline = deadline


class RedisParking(SessionParking):
    """This instance's side of the cluster's resumable sessions (see the module docstring)."""

    def __init__(
        self, client: Redis, prefix: str, instance_id: str, rules: pk.ParkingRules
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._instance_id = instance_id
        self._rules = rules
        self._grace_ms = str(round(rules.grace * 1000))
        self._tombstone = str(round(pk.TOMBSTONE_SECONDS))
        self._hold = client.register_script(parking_scripts.HOLD)
        self._park = client.register_script(parking_scripts.PARK)
        self._keep = client.register_script(parking_scripts.KEEP)
        self._claim = client.register_script(parking_scripts.CLAIM)
        self._forget = client.register_script(parking_scripts.FORGET)
        self._take_lapsed = client.register_script(parking_scripts.TAKE_LAPSED)
        self._resync = client.register_script(parking_scripts.RESYNC)
        # What this instance holds, and what it parked until its grace is over: written back
        # if Redis loses them (key -> mirror entry).
        self._mine: dict[str, _Mirror] = {}

    def _channel(self, instance_id: str) -> str:
        return f"{self._prefix}inst:{instance_id}"

    async def _call(self, script: Any, *args: Any) -> Any:
        try:
            return await script(args=[self._prefix, *args])
        except REDIS_FAILURES as exc:
            raise ParkingUnavailable(f"Redis is unreachable: {type(exc).__name__}") from None

    async def hold(self, resume_token: str, record: pk.SessionRecord, connection_id: str) -> None:
        meta = _meta_of(record)
        self._mine[record.key] = _Mirror(record, token_hash(resume_token), connection_id)
        await self._call(
            self._hold,
            record.key,
            token_hash(resume_token),
            record.user_id,
            meta,
            record.claims,
            self._instance_id,
            connection_id,
            self._grace_ms,
        )

    async def park(
        self, key: str, connection_id: str, phase: pk.ParkedPhase, claims: str | None
    ) -> bool:
        # Not held here any more, whatever happens next (a failed park ends the session).
        mirror = self._mine.pop(key, None)
        parked = await self._call(
            self._park,
            key,
            self._instance_id,
            connection_id,
            phase,
            claims or "",
            self._rules.max_parked_per_user,
        )
        if parked == -1:
            if mirror is not None and mirror.connection_id == connection_id:
                # Held here, and Redis no longer knows it: lost, not ended. End it now.
                raise ParkingUnavailable("the session's record is gone from Redis")
            return False
        if parked == 1 and mirror is not None:
            record = mirror.record
            if claims:
                record = msgspec.structs.replace(record, claims=claims)
            deadline = time.monotonic() + self._rules.grace
            self._mine[key] = _Mirror(record, mirror.token_hash, None, deadline)
        return bool(parked)

    async def keep(self, key: str, messages: Sequence[bytes], turn_done: bool) -> None:
        done = b"1" if turn_done else b"0"
        frame = b"\n".join([key.encode(), done, *messages])
        await self._call(
            self._keep,
            key,
            self._rules.max_messages,
            self._rules.max_bytes,
            done,
            frame,
            *messages,
        )

    async def claim(
        self, resume_token: str, user_id: str, new_resume_token: str, connection_id: str
    ) -> pk.Claim:
        reply = await self._call(
            self._claim,
            token_hash(resume_token),
            user_id,
            token_hash(new_resume_token),
            self._instance_id,
            connection_id,
            self._tombstone,
        )
        verdict = reply[0]
        if verdict == b"refused":
            return pk.ResumeRefused(_REFUSALS.get(reply[1], pk.Refusal.UNKNOWN))
        if verdict == b"held":
            return pk.HeldElsewhere(pk.Holder(_text(reply[1]), _text(reply[2])), _text(reply[3]))
        key, meta, claims, phase, dropped, *kept = reply[1:]
        record = _record_of(key, meta, claims)
        self._mine[record.key] = _Mirror(record, token_hash(new_resume_token), connection_id)
        return pk.Resumed(
            record,
            "processing" if phase == b"processing" else "active",
            tuple(kept),
            int(dropped),
        )

    async def ask_release(self, holder: pk.Holder, key: str) -> None:
        message = f"R{holder.connection_id}\n{key}"
        try:
            await self._client.publish(self._channel(holder.instance_id), message)
        except REDIS_FAILURES as exc:
            raise ParkingUnavailable(f"Redis is unreachable: {type(exc).__name__}") from None

    async def forget(self, key: str) -> None:
        self._mine.pop(key, None)
        await self._call(self._forget, key, self._tombstone)

    async def take_lapsed(self) -> list[pk.SessionRecord]:
        marked, *flat = await self._call(
            self._take_lapsed, SWEEP_BATCH, self._tombstone, self._instance_id
        )
        records = []
        for i in range(0, len(flat), 3):
            self._mine.pop(_text(flat[i]), None)
            records.append(_record_of(flat[i], flat[i + 1], flat[i + 2]))
        if not marked:  # after the lapsed ones left the mirror: they are not written back
            with contextlib.suppress(ParkingUnavailable):  # the next sweep tries again
                await self._write_back()
        return records

    async def _write_back(self) -> None:
        """Redis has lost this instance's mark, so perhaps everything: write back what this
        instance holds, and what it parked whose grace is not over."""
        now = time.monotonic()
        args: list[Any] = []
        for key, mirror in list(self._mine.items()):
            record = mirror.record
            if mirror.connection_id is None:
                left = (mirror.deadline or 0.0) - now
                if left <= 0:
                    del self._mine[key]  # its grace is over: it lapsed (or was taken) by now
                    continue
                kind, connection, left_ms = "p", "", round(left * 1000)
            else:
                kind, connection, left_ms = "h", mirror.connection_id, 0
            meta = _meta_of(record)
            args += (
                key,
                kind,
                record.user_id,
                meta,
                record.claims,
                mirror.token_hash,
                connection,
                self._grace_ms,
                left_ms,
            )
        await self._call(self._resync, self._instance_id, *args)
        if args:
            log.warning("parking_written_back", extra={"sessions": len(args) // 9})

    async def parked(self) -> int:
        try:
            return int(await self._client.zcard(f"{self._prefix}parked"))
        except REDIS_FAILURES as exc:
            raise ParkingUnavailable(f"Redis is unreachable: {type(exc).__name__}") from None

    async def leave(self) -> list[pk.SessionRecord]:
        # The sessions stay parked in Redis: another instance resumes (or ends) them. This
        # instance holds none by now (the drain parked them); it stops being a holder.
        with contextlib.suppress(*REDIS_FAILURES):
            await self._client.srem(f"{self._prefix}holders", self._instance_id)
        return []

    async def run(self, events: ParkingEvents) -> None:
        async def dispatch(data: bytes) -> None:
            kind, fields = data[:1], data[1:].split(b"\n")
            try:
                if kind == b"F" and len(fields) >= 3:
                    connection_id, key, done, *messages = fields
                    await events.forwarded(
                        connection_id.decode(), key.decode(), messages, done == b"1"
                    )
                elif kind == b"R" and len(fields) == 2:
                    await events.release(fields[0].decode(), fields[1].decode())
                else:
                    log.warning("parking_message_unreadable", extra={"bytes": len(data)})
            except Exception:  # one bad delivery must not end the instance's subscription
                log.exception("parking_message_failed", extra={"kind": kind.decode("latin-1")})

        await listen(self._client, self._channel(self._instance_id), dispatch)
