-- Breaker forced transition (mirrors breaker_core.force): operators, the monitor, recoveries.
-- KEYS[1] breaker hash, KEYS[2] probe lease; ARGV: state, now, ttl_ms, 'trip' or 'always', and
-- (closing unverified) the close lease's owner and end (epoch seconds, as given).
-- 'trip' leaves an open breaker alone: re-opening every monitor cycle must not move opened_at.
-- Returns the previous state.
-- include: breaker_lapse
lapse(ARGV[2])
local prev = redis.call('HGET', KEYS[1], 'state') or 'closed'
if ARGV[4] == 'trip' and prev == 'open' then return prev end
if ARGV[1] == 'open' then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[2], 'success_counter', 0,
             'changed_at', ARGV[2])
elseif ARGV[1] == 'half-open' then
  redis.call('HSET', KEYS[1], 'state', 'half-open', 'success_counter', 0, 'changed_at', ARGV[2])
else
  redis.call('HSET', KEYS[1], 'state', 'closed', 'fail_counter', 0, 'success_counter', 0,
             'changed_at', ARGV[2])
  redis.call('HDEL', KEYS[1], 'opened_at')
end
if ARGV[1] == 'closed' and ARGV[5] then
  redis.call('HSET', KEYS[1], 'close_lease_owner', ARGV[5], 'close_lease_until', ARGV[6])
else
  redis.call('HDEL', KEYS[1], 'close_lease_owner', 'close_lease_until')
end
redis.call('DEL', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return prev
