-- Bump a target's consecutive success or failure count in one step, so two monitors probing
-- the same target never lose an update (a read-modify-write from Python would).
-- KEYS[1] health hash; ARGV[1] '1' healthy / '0' failed, ARGV[2] reason, ARGV[3] probed_at.
-- Returns the hash after the update (HGETALL).
local key = KEYS[1]
local healthy = ARGV[1] == '1'
if healthy then
  redis.call('HINCRBY', key, 'successes', 1)
  redis.call('HSET', key, 'failures', 0, 'healthy', 1, 'reason', ARGV[2], 'probed_at', ARGV[3])
  redis.call('HDEL', key, 'first_failure_at')
else
  local failures = redis.call('HINCRBY', key, 'failures', 1)
  redis.call('HSET', key, 'successes', 0, 'healthy', 0, 'reason', ARGV[2], 'probed_at', ARGV[3])
  if failures == 1 then redis.call('HSET', key, 'first_failure_at', ARGV[3]) end
end
return redis.call('HGETALL', key)
