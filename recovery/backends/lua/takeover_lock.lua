-- Take the recovery lock over from ARGV[1] (an emergency taking over an automatic recovery):
-- compare-and-set on the old owner, so of two emergencies only one wins, and a lock that
-- changed hands (released, expired, re-taken) since the caller read it is not taken.
-- KEYS[1] lock key; ARGV[1] old owner, ARGV[2] new owner, ARGV[3] TTL in ms. Returns 1 if taken,
-- or already ARGV[2]'s: a call whose reply was lost is sent again by the client (one retry on a
-- dropped connection), and it must not read its own takeover as the lock changing hands.
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
if owner == ARGV[2] then
  return 1
end
return 0
