-- Extend the recovery lock only if ARGV[1] still owns it: after a TTL expiry another run may
-- hold it, and a blind PEXPIRE would extend someone else's lock.
-- KEYS[1] lock key; ARGV[1] owner token, ARGV[2] new TTL in ms. Returns 1 if extended.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
