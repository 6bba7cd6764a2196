-- Breaker success (mirrors recovery/backends/breaker_core.py: succeeded).
-- KEYS[1] breaker hash, KEYS[2] probe lease; ARGV: now, owner, probe ('1'/'0'),
-- success_threshold, ttl_ms. Returns the state after the success.
-- include: breaker_lapse
lapse(ARGV[1])
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if ARGV[3] == '1' then
  -- Only the lease holder's success counts: a probe whose lease lapsed may race a newer probe.
  if state == 'half-open' and redis.call('GET', KEYS[2]) == ARGV[2] then
    redis.call('DEL', KEYS[2])
    local successes = redis.call('HINCRBY', KEYS[1], 'success_counter', 1)
    if successes >= tonumber(ARGV[4]) then
      redis.call('HSET', KEYS[1], 'state', 'closed', 'fail_counter', 0, 'success_counter', 0,
                 'changed_at', ARGV[1])
      redis.call('HDEL', KEYS[1], 'opened_at')
      state = 'closed'
    end
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
  end
  return state
end
if state == 'closed' and tonumber(redis.call('HGET', KEYS[1], 'fail_counter') or '0') > 0 then
  redis.call('HSET', KEYS[1], 'fail_counter', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return state
