-- Included first by every breaker transition (`-- include: breaker_lapse`, expanded by the
-- loader in recovery/backends/lua/__init__.py). A close lease past its end is an open breaker,
-- opened when the lease ended (mirrors breaker_core._lapse): the recovery that closed it died
-- unverified. KEYS[1] is the breaker hash; ``now`` is the caller's clock (epoch seconds).
local function lapse(now)
  local lease_until = redis.call('HGET', KEYS[1], 'close_lease_until')
  if lease_until and tonumber(lease_until) <= tonumber(now) then
    redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', lease_until, 'success_counter', 0,
               'changed_at', lease_until)
    redis.call('HDEL', KEYS[1], 'close_lease_owner', 'close_lease_until')
  end
end
