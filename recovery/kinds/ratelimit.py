"""Rate limits: reading reset headers, bounded waits, and the AIMD request rate in shared state.

When a dependency answers 429 (or ``X-RateLimit-Remaining: 0``) the ``rate-limit-recovery``
workflow lowers the target's *allowed request rate* in shared state (observed limit x
``safety_factor``: multiplicative decrease), waits for the limit to reset (``Retry-After`` as
seconds or an HTTP date, else ``X-RateLimit-Reset``; never longer than ``max_wait_seconds``: a
longer reset is audited and escalated instead), and every later healthy monitor cycle raises the
rate by ``increase_per_cycle`` until it is back at ``normal_rate_per_second`` (additive
increase). Applications read the rate with ``recovery.client.tokenbucket.TokenBucket``.

Shared-state layout (Redis hash ``recovery:target:{name}:rate``, expires ``ttl_seconds`` after the
last write; an in-process dict without ``state_url``):

    allowed      requests/second the fleet may send now (absent: the configured normal rate)
    normal       the rate AIMD climbs back to; increase, interval: its step and spacing
    updated_at   last change of ``allowed`` (epoch seconds); lowered_at, reason: the last decrease
    reset_at     when the dependency said its limit resets (epoch seconds)
    observed     the limit it announced (requests/second), when known
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from recovery.backends.state import PREFIX, RedisState, SharedState, redis_client
from recovery.config.targets import RateLimitConfig
from recovery.errors import StateUnavailable
from recovery.redact import redact, redact_url

EPOCH_THRESHOLD = 1_000_000_000  # X-RateLimit-Reset above this is an epoch time, below a delay


# --- headers ------------------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    return max(0.0, seconds) if seconds == seconds else None  # NaN is not a delay


def parse_ratelimit_reset(value: str | None, now: float | None = None) -> float | None:
    """``X-RateLimit-Reset`` as seconds from now: epoch seconds (GitHub) or a delay (IETF draft)."""
    if not value:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if number != number or number < 0:
        return None
    if number >= EPOCH_THRESHOLD:
        return max(0.0, number - (time.time() if now is None else now))
    return number


def reset_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds until the limit resets: ``Retry-After`` first, else ``X-RateLimit-Reset``."""
    lowered = {k.lower(): v for k, v in headers.items()}
    retry_after = parse_retry_after(lowered.get("retry-after"), now)
    if retry_after is not None:
        return retry_after
    return parse_ratelimit_reset(lowered.get("x-ratelimit-reset"), now)


def observed_limit(headers: Mapping[str, str], window_seconds: float | None) -> float | None:
    """``X-RateLimit-Limit`` per ``window_seconds`` as requests/second (None when unknown)."""
    if window_seconds is None:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        limit = float(lowered.get("x-ratelimit-limit", "").strip())
    except ValueError:
        return None
    return limit / window_seconds if limit > 0 else None


# --- pure decisions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WaitPlan:
    """How long to sleep for a reset, or why not (escalate: the reset is beyond the cap)."""

    reset_in: float | None
    sleep_seconds: float
    escalate: bool

    @property
    def reason(self) -> str:
        if self.reset_in is None:
            return "no reset time announced"
        if self.escalate:
            return f"limit resets in {self.reset_in:g}s, beyond max_wait_seconds"
        return f"limit resets in {self.reset_in:g}s"


def plan_wait(reset_in: float | None, max_wait_seconds: float) -> WaitPlan:
    if reset_in is None or reset_in <= 0:
        return WaitPlan(reset_in, 0.0, False)
    if reset_in > max_wait_seconds:
        return WaitPlan(reset_in, 0.0, True)
    return WaitPlan(reset_in, round(reset_in, 3), False)


def decreased_rate(current: float, observed: float | None, config: RateLimitConfig) -> float:
    """Multiplicative decrease: the lower of current and observed, times the safety factor."""
    base = current if observed is None else min(current, observed)
    return max(config.min_rate_per_second, base * config.safety_factor)


def increased_rate(current: float, normal: float, increase: float) -> float:
    """Additive increase, never above the normal rate."""
    return min(normal, current + increase)


@dataclass(frozen=True)
class RateState:
    allowed: float | None
    normal: float | None
    updated_at: float | None
    reset_at: float | None
    observed: float | None
    reason: str | None

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _rate_state(raw: Mapping[str, Any]) -> RateState | None:
    if not raw:
        return None
    return RateState(
        allowed=_float(raw.get("allowed")),
        normal=_float(raw.get("normal")),
        updated_at=_float(raw.get("updated_at")),
        reset_at=_float(raw.get("reset_at")),
        observed=_float(raw.get("observed")),
        reason=str(raw["reason"]) if raw.get("reason") else None,
    )


def rate_key(target: str) -> str:
    return f"{PREFIX}:target:{target}:rate"


# --- stores --------------------------------------------------------------------------------------

_LOWER = """
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
"""

_RAISE = """
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
"""


class RateStore:
    """The allowed rate of each target; Redis when the state is shared, else this process."""

    def __init__(self, client: redis.Redis | None, description: str) -> None:
        self.client = client
        self.description = description
        self._memory: dict[str, dict[str, Any]] = {}
        self._mutex = threading.Lock()
        self._lower = client.register_script(_LOWER) if client is not None else None
        self._raise = client.register_script(_RAISE) if client is not None else None

    def _call(self, fn: Any) -> Any:
        try:
            return fn()
        except (redis.RedisError, OSError) as exc:
            raise StateUnavailable(f"rate state {self.description}: {redact(str(exc))}") from None

    def read(self, target: str) -> RateState | None:
        if self.client is None:
            with self._mutex:
                return _rate_state(dict(self._memory.get(target, {})))
        client = self.client
        return _rate_state(self._call(lambda: client.hgetall(rate_key(target))))

    def note_limited(
        self, target: str, now: float, reset_in: float | None, observed: float | None, ttl_seconds: float
    ) -> None:
        """Record what a rate-limited probe announced (the monitor calls this)."""
        fields: dict[str, str] = {}
        if reset_in is not None:
            fields["reset_at"] = repr(now + reset_in)
        if observed is not None:
            fields["observed"] = repr(observed)
        if not fields:
            return
        if self.client is None:
            with self._mutex:
                self._memory.setdefault(target, {}).update(fields)
            return
        client = self.client

        def write() -> None:
            with client.pipeline(transaction=True) as pipe:
                for name, value in fields.items():
                    pipe.hset(rate_key(target), name, value)
                pipe.pexpire(rate_key(target), max(1, int(ttl_seconds * 1000)))
                pipe.execute()

        self._call(write)

    def lower(
        self,
        target: str,
        config: RateLimitConfig,
        now: float,
        interval: float,
        reason: str,
        observed: float | None = None,
    ) -> tuple[float, float]:
        """Multiplicative decrease; returns (rate before, rate after)."""
        if self.client is None:
            with self._mutex:
                entry = self._memory.setdefault(target, {})
                current = _float(entry.get("allowed")) or config.normal_rate_per_second
                new = decreased_rate(current, observed, config)
                entry.update(
                    allowed=new,
                    normal=config.normal_rate_per_second,
                    increase=config.increase_per_cycle,
                    interval=interval,
                    updated_at=now,
                    lowered_at=now,
                    reason=reason,
                )
                return current, new
        args: list[str | int] = [
            repr(now),
            repr(observed) if observed is not None else "",
            repr(config.safety_factor),
            repr(config.min_rate_per_second),
            repr(config.normal_rate_per_second),
            repr(config.increase_per_cycle),
            repr(interval),
            max(1, int(config.ttl_seconds * 1000)),
            reason,
        ]
        script = self._lower
        assert script is not None
        before, after = self._call(lambda: script(keys=[rate_key(target)], args=args))
        return float(before), float(after)

    def raise_rates(self, targets: Iterable[str], now: float) -> dict[str, float]:
        """Additive increase for every lowered target among ``targets`` (one round trip)."""
        names = list(targets)
        if not names:
            return {}
        if self.client is None:
            out: dict[str, float] = {}
            with self._mutex:
                for name in names:
                    entry = self._memory.get(name)
                    if not entry or entry.get("allowed") is None:
                        continue
                    allowed = float(entry["allowed"])
                    if now - float(entry["updated_at"]) >= float(entry["interval"]):
                        allowed = increased_rate(allowed, float(entry["normal"]), float(entry["increase"]))
                        if allowed >= float(entry["normal"]):
                            for field in (
                                "allowed",
                                "normal",
                                "increase",
                                "interval",
                                "updated_at",
                                "lowered_at",
                                "reason",
                            ):
                                entry.pop(field, None)
                        else:
                            entry.update(allowed=allowed, updated_at=now)
                    out[name] = allowed
            return out
        script = self._raise
        assert script is not None
        flat = self._call(lambda: script(keys=[rate_key(n) for n in names], args=[repr(now)]))
        prefix, suffix = f"{PREFIX}:target:", ":rate"
        return {
            str(k)[len(prefix) : -len(suffix)]: float(v) for k, v in zip(flat[::2], flat[1::2], strict=True)
        }

    def clear(self, target: str) -> None:
        if self.client is None:
            with self._mutex:
                self._memory.pop(target, None)
            return
        client = self.client
        self._call(lambda: client.delete(rate_key(target)))


_memory_store = RateStore(None, "in-process")
_stores: dict[str, RateStore] = {}
_stores_lock = threading.Lock()


def rate_store_for(state: SharedState | str | None) -> RateStore:
    """The rate store sharing ``state``'s Redis (or a Redis URL); in-process without one."""
    if isinstance(state, RedisState):
        url = state.url
    elif isinstance(state, str) and state:
        url = state
    else:
        return _memory_store
    with _stores_lock:
        store = _stores.get(url)
        if store is None:
            store = _stores[url] = RateStore(redis_client(url), f"redis ({redact_url(url)})")
        return store
