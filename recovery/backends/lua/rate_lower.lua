-- AIMD multiplicative decrease of a target's allowed rate, atomic so two workers seeing 429 at
-- once lower it from the same current value once each, never from a stale read.
-- KEYS[1] rate hash. ARGV[1] now, ARGV[2] observed limit (req/s, '' if unknown),
-- ARGV[3] safety factor, ARGV[4] min rate, ARGV[5] normal rate, ARGV[6] increase per cycle,
-- ARGV[7] increase interval, ARGV[8] TTL in ms, ARGV[9] reason.
-- Returns {rate before, rate after} as strings (Lua numbers would be truncated to integers).
local normal = tonumber(ARGV[5])
local current = tonumber(redis.call('HGET', KEYS[1], 'allowed') or '') or normal
local base = current
local observed = tonumber(ARGV[2])
if observed and observed < base then base = observed end
local new = math.max(tonumber(ARGV[4]), base * tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'allowed', tostring(new), 'normal', ARGV[5], 'increase', ARGV[6],
           'interval', ARGV[7], 'updated_at', ARGV[1], 'lowered_at', ARGV[1], 'reason', ARGV[9])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
return {tostring(current), tostring(new)}
