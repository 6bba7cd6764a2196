-- Clear a target's paused flag unless a recovery holds its lock, in one step: a monitor that
-- takes the lock (and then sets the flag) between a separate check and delete must not lose it.
-- KEYS[1] paused flag, KEYS[2] recovery lock. Returns 1 if the flag was set and is now cleared.
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
return redis.call('DEL', KEYS[1])
