-- Breaker close lease (mirrors breaker_core.close_lease): only its owner extends, confirms or
-- revokes an unverified close. KEYS[1] breaker hash, KEYS[2] probe lease (unused);
-- ARGV: now, owner, action ('extend' | 'confirm' | 'revoke'), new end (extend), ttl_ms.
-- Returns 1 if the owner held the lease, else 0 (lapsed, confirmed, or the breaker moved since).
-- include: breaker_lapse
lapse(ARGV[1])
if redis.call('HGET', KEYS[1], 'close_lease_owner') ~= ARGV[2] then return 0 end
if ARGV[3] == 'extend' then
  redis.call('HSET', KEYS[1], 'close_lease_until', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
elseif ARGV[3] == 'confirm' then
  redis.call('HDEL', KEYS[1], 'close_lease_owner', 'close_lease_until')
else
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[1], 'success_counter', 0,
             'changed_at', ARGV[1])
  redis.call('HDEL', KEYS[1], 'close_lease_owner', 'close_lease_until')
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return 1
