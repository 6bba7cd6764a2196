-- Breaker admit (mirrors recovery/backends/breaker_core.py: admit).
-- KEYS[1] breaker hash, KEYS[2] probe lease; ARGV: now, reset_timeout, lease_ms, owner, ttl_ms.
-- Returns {verdict, state seen, number, holder}: number is fail_counter (pass) or the seconds
-- until the reset timeout elapses (reject while open).
-- include: breaker_lapse
lapse(ARGV[1])
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'closed' then
  return {'pass', state, redis.call('HGET', KEYS[1], 'fail_counter') or '0', ''}
end
if state == 'open' then
  local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at') or ARGV[1])
  local remaining = opened + tonumber(ARGV[2]) - tonumber(ARGV[1])
  if remaining > 0 then return {'reject', state, tostring(remaining), ''} end
end
-- SET NX PX: whoever gets here first holds the only probe, fleet-wide, until the lease lapses.
if redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[3]) then
  if state == 'open' then
    redis.call('HSET', KEYS[1], 'state', 'half-open', 'success_counter', 0, 'changed_at', ARGV[1])
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return {'probe', state, '0', ARGV[4]}
end
return {'reject', 'half-open', '0', redis.call('GET', KEYS[2]) or ''}
