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

Every step is one script, so a claim, a keep and an expiry never interleave: a lapsed
session is handed to exactly one instance; a turn's messages are either kept (and returned
by the claim) or forwarded to the claimer, never both. Sessions held by an instance whose
lease lapsed (killed) are parked by the next sweep, so their backend sessions get ended too.

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

from kalami_gateway.adapters.redis.channel import listen
from kalami_gateway.adapters.redis.directory import PRELUDE, REDIS_FAILURES
from kalami_gateway.domain import parking as pk
from kalami_gateway.domain.ports import ParkingEvents, ParkingUnavailable, SessionParking

log = logging.getLogger(__name__)

# At most this many lapsed sessions are taken by one sweep (the next sweep takes the rest).
SWEEP_BATCH: Final = 100

# ARGV: prefix, key, token hash, user, meta, claims, instance, connection, grace ms.
_HOLD: Final = (
    PRELUDE
    + """
local r = p .. 'rs:' .. ARGV[2]
redis.call('DEL', r, r .. ':kept')
redis.call('HSET', r, 'user', ARGV[4], 'meta', ARGV[5], 'claims', ARGV[6], 'phase', 'active',
  'inst', ARGV[7], 'conn', ARGV[8], 'grace', ARGV[9], 'tok', ARGV[3], 'dropped', 0, 'bytes', 0)
redis.call('EXPIRE', r, ttl)
redis.call('SET', p .. 'rt:' .. ARGV[3], ARGV[2], 'EX', ttl)
redis.call('SADD', p .. 'held:' .. ARGV[7], ARGV[2])
redis.call('EXPIRE', p .. 'held:' .. ARGV[7], ttl)
redis.call('SADD', p .. 'holders', ARGV[7])
redis.call('EXPIRE', p .. 'holders', ttl)
return 1
"""
)

# ARGV: prefix, key, instance, connection, phase, claims ('' keeps the held ones), the user's
# cap of parked sessions (0: none; past it the oldest lapse now: the next sweep ends them).
# Returns 1 (parked), 0 (not this connection's any more), -1 (no record: Redis lost it).
_PARK: Final = (
    PRELUDE
    + """
local r = p .. 'rs:' .. ARGV[2]
if redis.call('EXISTS', r) == 0 then
  return -1
end
if redis.call('HGET', r, 'inst') ~= ARGV[3] or redis.call('HGET', r, 'conn') ~= ARGV[4] then
  return 0
end
redis.call('SREM', p .. 'held:' .. ARGV[3], ARGV[2])
redis.call('HSET', r, 'inst', '', 'conn', '', 'phase', ARGV[5], 'dropped', 0, 'bytes', 0)
if ARGV[6] ~= '' then
  redis.call('HSET', r, 'claims', ARGV[6])
end
redis.call('DEL', r .. ':kept')
redis.call('EXPIRE', r, ttl)
redis.call('ZADD', p .. 'parked', now + tonumber(redis.call('HGET', r, 'grace')), ARGV[2])
redis.call('EXPIRE', p .. 'parked', ttl)
local pu = p .. 'pu:' .. redis.call('HGET', r, 'user')
redis.call('ZADD', pu, now, ARGV[2])
redis.call('EXPIRE', pu, ttl)
local cap = tonumber(ARGV[7])
if cap > 0 then
  for _, old in ipairs(redis.call('ZRANGE', pu, 0, -cap - 1)) do
    redis.call('ZREM', pu, old)
    if redis.call('ZSCORE', p .. 'parked', old) then
      redis.call('ZADD', p .. 'parked', now, old)
    end
  end
end
return 1
"""
)

# ARGV: prefix, key, max messages, max bytes, done (1/0), forward frame, then the messages.
# Returns 0 (gone), 1 (forwarded to the holder), 2 (kept). The bounds are domain/parking.keep's.
_KEEP: Final = (
    PRELUDE
    + """
local r = p .. 'rs:' .. ARGV[2]
if redis.call('EXISTS', r) == 0 then
  return 0
end
if ARGV[5] == '1' then
  redis.call('HSET', r, 'phase', 'active')
end
local conn = redis.call('HGET', r, 'conn')
if conn ~= '' then
  local inst = redis.call('HGET', r, 'inst')
  redis.call('PUBLISH', p .. 'inst:' .. inst, 'F' .. conn .. '\\n' .. ARGV[6])
  return 1
end
local k = r .. ':kept'
local size = tonumber(redis.call('HGET', r, 'bytes'))
local dropped = tonumber(redis.call('HGET', r, 'dropped'))
local max_n, max_b = tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 7, #ARGV do
  redis.call('RPUSH', k, ARGV[i])
  size = size + #ARGV[i]
end
local n = redis.call('LLEN', k)
while n > 0 and (n > max_n or size > max_b) do
  size = size - #redis.call('LPOP', k)
  dropped = dropped + 1
  n = n - 1
end
redis.call('HSET', r, 'bytes', size, 'dropped', dropped)
redis.call('EXPIRE', k, ttl)
return 2
"""
)

# ARGV: prefix, token hash, user, new token hash, instance, connection, tombstone seconds.
# Returns {'refused', why} | {'held', instance, connection, key} |
# {'resumed', key, meta, claims, phase, dropped, kept messages...}.
_CLAIM: Final = (
    PRELUDE
    + """
local m = redis.call('GET', p .. 'rt:' .. ARGV[2])
if not m then
  return {'refused', 'unknown'}
end
if string.sub(m, 1, 1) == '!' then
  return {'refused', string.sub(m, 2)}
end
local r = p .. 'rs:' .. m
if redis.call('EXISTS', r) == 0 then
  return {'refused', 'unknown'}
end
if redis.call('HGET', r, 'user') ~= ARGV[3] then
  return {'refused', 'other_user'}
end
local holder = redis.call('HGET', r, 'inst')
if holder ~= '' then
  local lease = redis.call('ZSCORE', p .. 'instances', holder)
  if lease and tonumber(lease) > now then
    return {'held', holder, redis.call('HGET', r, 'conn'), m}
  end
  -- Its instance is gone (killed): so is any turn it was running.
  redis.call('SREM', p .. 'held:' .. holder, m)
  redis.call('HSET', r, 'phase', 'active')
end
redis.call('ZREM', p .. 'parked', m)
redis.call('ZREM', p .. 'pu:' .. ARGV[3], m)
redis.call('SET', p .. 'rt:' .. ARGV[2], '!used', 'EX', ARGV[7])
redis.call('SET', p .. 'rt:' .. ARGV[4], m, 'EX', ttl)
local out = {'resumed', m, redis.call('HGET', r, 'meta'), redis.call('HGET', r, 'claims'),
  redis.call('HGET', r, 'phase'), redis.call('HGET', r, 'dropped')}
for _, v in ipairs(redis.call('LRANGE', r .. ':kept', 0, -1)) do
  out[#out + 1] = v
end
redis.call('DEL', r .. ':kept')
redis.call('HSET', r, 'inst', ARGV[5], 'conn', ARGV[6], 'tok', ARGV[4], 'dropped', 0, 'bytes', 0)
redis.call('EXPIRE', r, ttl)
redis.call('SADD', p .. 'held:' .. ARGV[5], m)
redis.call('EXPIRE', p .. 'held:' .. ARGV[5], ttl)
redis.call('SADD', p .. 'holders', ARGV[5])
redis.call('EXPIRE', p .. 'holders', ttl)
return out
"""
)

# ARGV: prefix, key, tombstone seconds.
_FORGET: Final = (
    PRELUDE
    + """
local r = p .. 'rs:' .. ARGV[2]
local tok = redis.call('HGET', r, 'tok')
if not tok then
  return 0
end
redis.call('SET', p .. 'rt:' .. tok, '!ended', 'EX', ARGV[3])
local holder = redis.call('HGET', r, 'inst')
if holder ~= '' then
  redis.call('SREM', p .. 'held:' .. holder, ARGV[2])
end
redis.call('ZREM', p .. 'parked', ARGV[2])
redis.call('ZREM', p .. 'pu:' .. redis.call('HGET', r, 'user'), ARGV[2])
redis.call('DEL', r, r .. ':kept')
return 1
"""
)

# ARGV: prefix, batch size, tombstone seconds, instance. Returns whether this instance's mark
# is missing (Redis lost its data: write the mirror back), then key, meta, claims triples.
_TAKE_LAPSED: Final = (
    PRELUDE
    + """
local out = {redis.call('EXISTS', p .. 'mark:' .. ARGV[4])}
for _, holder in ipairs(redis.call('SMEMBERS', p .. 'holders')) do
  local lease = redis.call('ZSCORE', p .. 'instances', holder)
  if not lease or tonumber(lease) <= now then
    -- A dead instance's sessions start their grace now, as if their connections had dropped.
    for _, key in ipairs(redis.call('SMEMBERS', p .. 'held:' .. holder)) do
      local r = p .. 'rs:' .. key
      if redis.call('HGET', r, 'inst') == holder then
        redis.call('HSET', r, 'inst', '', 'conn', '', 'phase', 'active')
        redis.call('ZADD', p .. 'parked', now + tonumber(redis.call('HGET', r, 'grace')), key)
      end
    end
    redis.call('DEL', p .. 'held:' .. holder)
    redis.call('SREM', p .. 'holders', holder)
  end
end
local due = redis.call('ZRANGEBYSCORE', p .. 'parked', '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, key in ipairs(due) do
  redis.call('ZREM', p .. 'parked', key)
  local r = p .. 'rs:' .. key
  local tok = redis.call('HGET', r, 'tok')
  if tok then
    redis.call('SET', p .. 'rt:' .. tok, '!lapsed', 'EX', ARGV[3])
    redis.call('ZREM', p .. 'pu:' .. redis.call('HGET', r, 'user'), key)
    out[#out + 1] = key
    out[#out + 1] = redis.call('HGET', r, 'meta')
    out[#out + 1] = redis.call('HGET', r, 'claims')
    redis.call('DEL', r, r .. ':kept')
  end
end
return out
"""
)

# ARGV: prefix, instance, then per session 9 fields: key, kind ('h' held / 'p' parked), user,
# meta, claims, token hash, connection, grace ms, grace left ms. A held record is written as
# it is; a parked one only if no instance has written the session back first.
_RESYNC: Final = (
    PRELUDE
    + """
local iid = ARGV[2]
for i = 3, #ARGV, 9 do
  local key, kind = ARGV[i], ARGV[i + 1]
  local r = p .. 'rs:' .. key
  if kind == 'h' or redis.call('EXISTS', r) == 0 then
    redis.call('HSET', r, 'user', ARGV[i + 2], 'meta', ARGV[i + 3], 'claims', ARGV[i + 4],
      'phase', 'active', 'grace', ARGV[i + 7], 'tok', ARGV[i + 5], 'dropped', 0, 'bytes', 0)
    redis.call('EXPIRE', r, ttl)
    redis.call('SET', p .. 'rt:' .. ARGV[i + 5], key, 'EX', ttl)
    if kind == 'h' then
      redis.call('HSET', r, 'inst', iid, 'conn', ARGV[i + 6])
      redis.call('ZREM', p .. 'parked', key)
      redis.call('SADD', p .. 'held:' .. iid, key)
      redis.call('EXPIRE', p .. 'held:' .. iid, ttl)
      redis.call('SADD', p .. 'holders', iid)
      redis.call('EXPIRE', p .. 'holders', ttl)
    else
      redis.call('HSET', r, 'inst', '', 'conn', '')
      redis.call('ZADD', p .. 'parked', now + tonumber(ARGV[i + 8]), key)
      redis.call('EXPIRE', p .. 'parked', ttl)
    end
  end
end
redis.call('SET', p .. 'mark:' .. iid, '1', 'EX', ttl)
return 1
"""
)

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


_encode_meta: Final = msgspec.json.Encoder().encode
_decode_meta: Final = msgspec.json.Decoder(_Meta).decode


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
        self._hold = client.register_script(_HOLD)
        self._park = client.register_script(_PARK)
        self._keep = client.register_script(_KEEP)
        self._claim = client.register_script(_CLAIM)
        self._forget = client.register_script(_FORGET)
        self._take_lapsed = client.register_script(_TAKE_LAPSED)
        self._resync = client.register_script(_RESYNC)
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
        meta = _encode_meta(
            _Meta(record.user_id, record.session_id, record.profile_id, record.topic)
        )
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
        m = _decode_meta(meta)
        record = pk.SessionRecord(
            _text(key), m.user_id, m.session_id, m.profile_id, m.topic, _text(claims)
        )
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
            m = _decode_meta(flat[i + 1])
            records.append(
                pk.SessionRecord(
                    _text(flat[i]),
                    m.user_id,
                    m.session_id,
                    m.profile_id,
                    m.topic,
                    _text(flat[i + 2]),
                )
            )
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
            meta = _encode_meta(
                _Meta(record.user_id, record.session_id, record.profile_id, record.topic)
            )
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
