-- Sliding-window admission on a sorted set (score = hit time): trim, count, add only if every
-- limit still has room. One script for the manual-trigger limit (one limit) and the time_window
-- strategy (several limits, one set), so concurrent callers on any worker never overshoot.
-- KEYS[1] the set.
-- ARGV[1] now, ARGV[2] member to add, ARGV[3] keep (seconds of history to keep: the longest
-- window), ARGV[4] '1' to add without checking the limits (an emergency run is counted but
-- never refused), then pairs from ARGV[5]: limit, window seconds.
-- Returns {full, count, retry}: full = 0 when added, else the ARGV index of the first full
-- limit; count = hits in the longest window after adding, or in the full limit's window;
-- retry = seconds until the full window frees a slot (a string: Lua numbers become integers).
local key = KEYS[1]
local now = tonumber(ARGV[1])
local keep = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - keep)
if ARGV[4] ~= '1' then
  for i = 5, #ARGV, 2 do
    local limit, window = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
    -- %.17g: tostring() keeps only 14 digits, too few for epoch seconds with microseconds
    local since = string.format('(%.17g', now - window)
    local count = redis.call('ZCOUNT', key, since, '+inf')
    if count >= limit then
      local oldest = redis.call('ZRANGEBYSCORE', key, since, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
      local retry = 0
      if oldest[2] then retry = tonumber(oldest[2]) + window - now end
      return {i, count, tostring(retry)}
    end
  end
end
redis.call('ZADD', key, now, ARGV[2])
redis.call('PEXPIRE', key, math.ceil(keep * 1000))
return {0, redis.call('ZCARD', key), '0'}
