-- Breaker probe release (mirrors breaker_core.release): a cancelled probe gives its lease back.
-- KEYS[1] breaker hash (unused), KEYS[2] probe lease; ARGV: owner.
if redis.call('GET', KEYS[2]) == ARGV[1] then return redis.call('DEL', KEYS[2]) end
return 0
