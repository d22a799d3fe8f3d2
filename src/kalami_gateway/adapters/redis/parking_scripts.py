"""The parking store's Lua scripts, each one atomic step on the keys described in
``parking.py``'s docstring, built on the shared ``PRELUDE`` of ``scripts.py`` (whose reaping
and the directory's lease sorted set say which holders are alive)."""

from __future__ import annotations

from typing import Final

from kalami_gateway.adapters.redis.scripts import PRELUDE

# ARGV: prefix, key, token hash, user, meta, claims, instance, connection, grace ms.
HOLD: Final = (
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
PARK: Final = (
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
KEEP: Final = (
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
CLAIM: Final = (
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
FORGET: Final = (
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
TAKE_LAPSED: Final = (
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
RESYNC: Final = (
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
