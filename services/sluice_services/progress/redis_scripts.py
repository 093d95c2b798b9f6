"""The Lua of Redis mode's job transitions: each one atomic, fenced, on Redis's clock.

A job is a hash whose values are JSON (so ``state`` reads ``"running"``, quotes and all).
A running job's lease is its score in the running set: the moment, in Redis's own
milliseconds, it expires; it is held while that moment plus the grace has not passed.
"""

from __future__ import annotations

_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function set_pairs(key, first)
  for i = first, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
end
local function next_seq(key)
  return tonumber(redis.call('HGET', key, 'seq')) + 1
end
local function append(key, seq, etype, edata, maxlen)
  redis.call('XADD', key, 'MAXLEN', '~', maxlen, '0-' .. seq, 'type', etype, 'data', edata)
end
local function holds(job, running, id, token, grace)
  if redis.call('HGET', job, 'lease') ~= token then return false end
  if redis.call('HGET', job, 'state') ~= '"running"' then return false end
  local expires = redis.call('ZSCORE', running, id)
  return expires ~= false and tonumber(expires) + tonumber(grace) >= now_ms()
end
"""

# KEYS: job, running, events, cancel
# ARGV: id, attempt, token, hold_ms, maxlen, event type, event data, field/value pairs...
START = (
    _PRELUDE
    + """
if redis.call('HGET', KEYS[1], 'state') ~= '"queued"' then return false end
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then return false end
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local seq = next_seq(KEYS[1])
set_pairs(KEYS[1], 8)
redis.call('HSET', KEYS[1], 'lease', ARGV[3], 'seq', seq, 'by', ARGV[3])
append(KEYS[3], seq, ARGV[6], ARGV[7], ARGV[5])
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[4]), ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""
)

# KEYS: job, running, cancel
# ARGV: id, token, hold_ms, grace_ms  ->  1 held, 2 held and a cancel is asked, 0 lost
RENEW = (
    _PRELUDE
    + """
if not holds(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[3]), ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 1 then return 2 end
return 1
"""
)

# KEYS: job, running, events
# ARGV: id, token, seq, grace_ms, final, maxlen, retention, event type, event data, pairs...
# -> 1 applied, 2 applied already (a retry whose first reply was lost), 0 refused
ADVANCE = (
    _PRELUDE
    + """
local current = redis.call('HGET', KEYS[1], 'seq')
if not current then return 0 end
local seq = tonumber(ARGV[3])
if seq == tonumber(current) and redis.call('HGET', KEYS[1], 'by') == ARGV[2] then return 2 end
if seq ~= tonumber(current) + 1 then return 0 end
if not holds(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[4]) then return 0 end
set_pairs(KEYS[1], 10)
redis.call('HSET', KEYS[1], 'seq', seq, 'by', ARGV[2])
append(KEYS[3], seq, ARGV[8], ARGV[9], ARGV[6])
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], 'lease', 'null')
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[7])
  redis.call('EXPIRE', KEYS[3], ARGV[7])
end
return 1
"""
)

# KEYS: job, events, requeue
# ARGV: id, maxlen, retention, event type, event data, pairs...  ->  1 cancelled, 0 not queued
CANCEL_QUEUED = (
    _PRELUDE
    + """
if redis.call('HGET', KEYS[1], 'state') ~= '"queued"' then return 0 end
local seq = next_seq(KEYS[1])
set_pairs(KEYS[1], 6)
redis.call('HSET', KEYS[1], 'seq', seq, 'by', '""', 'lease', 'null')
append(KEYS[2], seq, ARGV[4], ARGV[5], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""
)

# KEYS: running  ARGV: grace_ms, count  ->  ids whose lease expired more than grace ago
EXPIRED = (
    _PRELUDE
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now_ms() - tonumber(ARGV[1])),
                  'LIMIT', 0, tonumber(ARGV[2]))
"""
)

# KEYS: job, running, events, requeue
# ARGV: id, attempt, grace_ms, retry, maxlen, retention, event type, event data, pairs...
# -> 1 reaped (failed or queued again), 0 not expired or not that attempt's run any more
REAP = (
    _PRELUDE
    + """
local expires = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not expires then return 0 end
if tonumber(expires) + tonumber(ARGV[3]) >= now_ms() then return 0 end
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= '"running"' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
local seq = next_seq(KEYS[1])
set_pairs(KEYS[1], 9)
redis.call('HSET', KEYS[1], 'seq', seq, 'by', '""', 'lease', 'null')
append(KEYS[3], seq, ARGV[7], ARGV[8], ARGV[5])
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[4], now_ms(), ARGV[1])
else
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('EXPIRE', KEYS[3], ARGV[6])
end
return 1
"""
)
