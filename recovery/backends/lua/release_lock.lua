-- Delete the recovery lock only if ARGV[1] owns it (never release someone else's lock).
-- KEYS[1] lock key; ARGV[1] owner token. Returns 1 if deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
