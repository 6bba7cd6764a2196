-- Breaker failure (mirrors recovery/backends/breaker_core.py: failed).
-- KEYS[1] breaker hash, KEYS[2] probe lease; ARGV: now, owner, probe ('1'/'0'), fail_max, ttl_ms.
-- Returns {state after, 1 if this failure opened the breaker else 0}.
-- include: breaker_lapse
lapse(ARGV[1])
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local function trip()
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[1], 'success_counter', 0,
             'changed_at', ARGV[1])
  redis.call('HDEL', KEYS[1], 'close_lease_owner', 'close_lease_until')  -- tripped mid-verification
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return {'open', 1}
end
if ARGV[3] == '1' and state == 'half-open' and redis.call('GET', KEYS[2]) == ARGV[2] then
  -- The probe failed: counted like any failure (an open breaker must not show "failures 0"
  -- after its probe failed), and the breaker re-opens with a new opened_at.
  redis.call('DEL', KEYS[2])
  redis.call('HINCRBY', KEYS[1], 'fail_counter', 1)
  return trip()
end
-- A late outcome (a lapsed probe, or a call admitted before the breaker opened): not counted.
if ARGV[3] == '1' or state ~= 'closed' then return {state, 0} end
local failures = redis.call('HINCRBY', KEYS[1], 'fail_counter', 1)
if failures >= tonumber(ARGV[4]) then return trip() end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {'closed', 0}
