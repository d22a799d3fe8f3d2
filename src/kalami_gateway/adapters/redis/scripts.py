"""The Lua the cluster runs on Redis: the ``PRELUDE`` every script starts with (the parking
store's too), the connection directory's scripts, and the push script. Each script is one
atomic step; the keys they use are described in ``directory.py`` (and ``parking.py``, whose
scripts are in ``parking_scripts.py``).
"""

from __future__ import annotations

from typing import Final

KEY_TTL: Final = 24 * 3600

# Shared by every script (the parking store's too): the prefix, the time, the key TTL, and the
# reaping of instances whose lease has lapsed.
PRELUDE = """
local p = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = KEY_TTL

local function drop(cid, uid)
  local ukey = p .. 'user:' .. uid
  redis.call('SREM', ukey, cid)
  if redis.call('SCARD', ukey) == 0 then
    redis.call('SREM', p .. 'users', uid)
  end
end

local function forget_instance(iid)
  local key = p .. 'instance:' .. iid
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    drop(flat[i], flat[i + 1])
  end
  redis.call('DEL', key)
  redis.call('ZREM', p .. 'instances', iid)
end

local function reap()
  local dead = redis.call('ZRANGEBYSCORE', p .. 'instances', '-inf', now)
  for _, iid in ipairs(dead) do
    forget_instance(iid)
  end
end

local function lease(iid, lease_ms)
  local fresh = redis.call('ZADD', p .. 'instances', now + lease_ms, iid)
  redis.call('EXPIRE', p .. 'instances', ttl)
  redis.call('EXPIRE', p .. 'instance:' .. iid, ttl)
  return fresh
end

local function add(iid, cid, uid)
  redis.call('HSET', p .. 'instance:' .. iid, cid, uid)
  redis.call('SADD', p .. 'user:' .. uid, cid)
  redis.call('EXPIRE', p .. 'user:' .. uid, ttl)
  redis.call('SADD', p .. 'users', uid)
  redis.call('EXPIRE', p .. 'users', ttl)
end
"""

PRELUDE = PRELUDE.replace("KEY_TTL", str(KEY_TTL))

# ARGV: prefix, instance id, lease ms, then connection id, user id, cap triples (a batch).
# Returns {whether this instance had dropped out of the directory (1/0), then admitted (1/0)
# for each triple, in order}. In order means the cap is judged as if they came one by one.
REGISTER: Final = (
    PRELUDE
    + """
local iid = ARGV[2]
local fresh = lease(iid, tonumber(ARGV[3]))
reap()
local out = {fresh}
local mine = p .. 'instance:' .. iid
for i = 4, #ARGV, 3 do
  local cid, uid, cap = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if redis.call('HEXISTS', mine, cid) == 1 then
    out[#out + 1] = 1
  elseif cap > 0 and redis.call('SCARD', p .. 'user:' .. uid) >= cap then
    out[#out + 1] = 0
  else
    add(iid, cid, uid)
    out[#out + 1] = 1
  end
end
return out
"""
)

# ARGV: prefix, instance id, then connection ids (a batch).
UNREGISTER: Final = (
    PRELUDE
    + """
local key = p .. 'instance:' .. ARGV[2]
for i = 3, #ARGV do
  local uid = redis.call('HGET', key, ARGV[i])
  if uid then
    redis.call('HDEL', key, ARGV[i])
    drop(ARGV[i], uid)
  end
end
return 0
"""
)

# ARGV: prefix, instance id, lease ms. Returns 1 if the instance had dropped out (was absent).
RENEW: Final = (
    PRELUDE
    + """
reap()
return lease(ARGV[2], tonumber(ARGV[3]))
"""
)

# ARGV: prefix, instance id, lease ms, then connection id, user id pairs: this instance's
# entries, written back as they are (no cap: they are open already).
RESYNC: Final = (
    PRELUDE
    + """
local iid = ARGV[2]
reap()
forget_instance(iid)
lease(iid, tonumber(ARGV[3]))
for i = 4, #ARGV, 2 do
  add(iid, ARGV[i], ARGV[i + 1])
end
return 0
"""
)

# ARGV: prefix, instance id.
LEAVE: Final = (
    PRELUDE
    + """
forget_instance(ARGV[2])
return 0
"""
)

# ARGV: prefix. Returns {instances, connections, users}.
COUNTS: Final = (
    PRELUDE
    + """
reap()
local live = redis.call('ZRANGE', p .. 'instances', 0, -1)
local connections = 0
for _, iid in ipairs(live) do
  connections = connections + redis.call('HLEN', p .. 'instance:' .. iid)
end
return {#live, connections, redis.call('SCARD', p .. 'users')}
"""
)

# ARGV: prefix, user id.
CONNECTIONS_OF: Final = (
    PRELUDE
    + """
reap()
return redis.call('SMEMBERS', p .. 'user:' .. ARGV[2])
"""
)

# ARGV: prefix, user id, channel, message. Returns the user's connection count when published.
PUSH_SCRIPT: Final = (
    PRELUDE
    + """
reap()
local n = redis.call('SCARD', p .. 'user:' .. ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return n
"""
)
