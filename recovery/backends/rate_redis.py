"""``RedisRateStore``: the allowed rates in Redis hashes, read by every application worker.

Decrease and increase are Lua scripts (``lua/rate_lower.lua``, ``lua/rate_raise.lua``) so two
monitors or flows never compute a rate from a stale read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import redis

from recovery.backends.keys import rate_key, target_of
from recovery.backends.lua import Scripts
from recovery.backends.rate import Lowering, RateState, RateStore, parse_rate
from recovery.backends.state import DEFAULT_TIMEOUT_SECONDS, redis_client
from recovery.backends.state_redis import RedisState
from recovery.config.targets import RateLimitConfig
from recovery.errors import StateUnavailable
from recovery.redact import redact, redact_url


class RedisRateStore(RateStore):
    def __init__(self, client: redis.Redis, description: str, scripts: Scripts | None = None) -> None:
        self.client = client
        self.description = description
        self.scripts = scripts or Scripts(client)

    @classmethod
    def on_state(cls, state: RedisState) -> RedisRateStore:
        """Share ``state``'s client (one connection pool) and its registered scripts."""
        return cls(state.client, f"redis ({redact_url(state.url)})", state.scripts)

    @classmethod
    def from_url(cls, url: str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> RedisRateStore:
        return cls(redis_client(url, timeout=timeout), f"redis ({redact_url(url)})")

    def _call(self, fn: Callable[[], Any]) -> Any:  # redis-py returns are loosely typed
        try:
            return fn()
        except (redis.RedisError, OSError) as exc:
            raise StateUnavailable(f"rate state {self.description}: {redact(str(exc))}") from None

    def read(self, target: str) -> RateState | None:
        return parse_rate(self._call(lambda: self.client.hgetall(rate_key(target))))

    def _merge(self, target: str, fields: dict[str, str], ttl_seconds: float) -> None:
        def write() -> None:
            with self.client.pipeline(transaction=True) as pipe:
                for name, value in fields.items():
                    pipe.hset(rate_key(target), name, value)
                pipe.pexpire(rate_key(target), max(1, int(ttl_seconds * 1000)))
                pipe.execute()

        self._call(write)

    def _lower(self, target: str, config: RateLimitConfig, step: Lowering) -> tuple[float, float]:
        args: list[str | int] = [
            repr(step.now),
            repr(step.observed) if step.observed is not None else "",
            repr(config.safety_factor),
            repr(config.min_rate_per_second),
            repr(config.normal_rate_per_second),
            repr(config.increase_per_cycle),
            repr(step.interval),
            max(1, int(config.ttl_seconds * 1000)),
            step.reason,
        ]
        script = self.scripts("rate_lower")
        before, after = self._call(lambda: script(keys=[rate_key(target)], args=args))
        return float(before), float(after)

    def raise_rates(self, targets: Iterable[str], now: float) -> dict[str, float]:
        names = list(targets)
        if not names:
            return {}
        script = self.scripts("rate_raise")
        flat = self._call(lambda: script(keys=[rate_key(n) for n in names], args=[repr(now)]))
        out: dict[str, float] = {}
        for key, value in zip(flat[::2], flat[1::2], strict=True):
            name = target_of(str(key), "rate")
            if name is not None:  # always: the script returns the keys it was given
                out[name] = float(value)
        return out

    def clear(self, target: str) -> None:
        self._call(lambda: self.client.delete(rate_key(target)))
