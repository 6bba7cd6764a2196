-- AIMD additive increase for every lowered target in KEYS (one round trip per monitor cycle).
-- A rate rises at most once per its interval; back at the normal rate, the AIMD fields go (the
-- reset_at / observed fields a probe noted stay until the hash expires).
-- ARGV[1] now. Returns a flat list key, new rate (string) for each lowered target.
local out = {}
for i, key in ipairs(KEYS) do
  local h = redis.call('HMGET', key, 'allowed', 'normal', 'increase', 'interval', 'updated_at')
  local allowed = tonumber(h[1] or '')
  if allowed then
    local normal, inc = tonumber(h[2]), tonumber(h[3])
    local interval, updated = tonumber(h[4] or '0'), tonumber(h[5] or '0')
    if tonumber(ARGV[1]) - updated >= interval then
      allowed = math.min(normal, allowed + inc)
      if allowed >= normal then
        redis.call('HDEL', key, 'allowed', 'normal', 'increase', 'interval', 'updated_at', 'lowered_at',
                   'reason')
      else
        redis.call('HSET', key, 'allowed', tostring(allowed), 'updated_at', ARGV[1])
      end
    end
    out[#out + 1] = key
    out[#out + 1] = tostring(allowed)
  end
end
return out
