-- Breaker probe refresh (mirrors breaker_core.refresh): only the holder extends its lease.
-- KEYS[1] breaker hash (unused), KEYS[2] probe lease; ARGV: owner, lease_ms.
if redis.call('GET', KEYS[2]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return 0
