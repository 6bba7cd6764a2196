"""The application side of rate limiting: a token bucket that follows the rate in shared state.

``rate-limit-recovery`` and the monitor move a target's *allowed* rate (``recovery.kinds.ratelimit``);
each application process paces its requests with a ``TokenBucket`` that re-reads that rate at
most every ``refresh_seconds``. The rate in shared state is the fleet's: a process that is one of
``workers`` identical processes takes ``rate / workers``. While the dependency's announced reset
time (``reset_at``) lies ahead, no token is handed out at all.

    bucket = token_bucket_for(load_config(), "payments-api", workers=4)
    await bucket.aacquire()          # or bucket.acquire() in sync code; try_acquire() never waits
    response = await client.get(...)

A shared state that cannot be read keeps the last rate read (the configured normal rate if none
was ever read): rate limiting must not take the application down with Redis.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from recovery.backends.rate import RateState, RateStore, rate_store_for
from recovery.config.loader import HttpTarget, RecoveryConfig
from recovery.errors import ConfigError, StateUnavailable

logger = logging.getLogger("recovery.client.tokenbucket")


class TokenBucket:
    def __init__(
        self,
        target: str,
        store: RateStore,
        *,
        normal_rate: float,
        burst: float | None = None,
        workers: int = 1,
        refresh_seconds: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if normal_rate <= 0 or workers < 1:
            raise ValueError("normal_rate must be > 0 and workers >= 1")
        self.target = target
        self.store = store
        self.normal_rate = normal_rate
        self.workers = workers
        self.refresh_seconds = refresh_seconds
        self._burst = burst
        self._monotonic = monotonic
        self._wall = wall
        self._mutex = threading.Lock()
        self._rate = normal_rate / workers
        self._reset_at: float | None = None
        self._read_at: float | None = None
        self._tokens = self.capacity
        self._filled_at = monotonic()

    @property
    def capacity(self) -> float:
        """Burst size: ``burst`` if given, else one second of the current rate (at least 1)."""
        return self._burst if self._burst is not None else max(1.0, self._rate)

    def _refresh(self) -> None:
        now = self._monotonic()
        if self._read_at is not None and now - self._read_at < self.refresh_seconds:
            return
        self._read_at = now
        try:
            state: RateState | None = self.store.read(self.target)
        except StateUnavailable as exc:
            logger.warning("token bucket %s: %s; keeping %.3g req/s", self.target, exc, self._rate)
            return
        allowed = state.allowed if state is not None and state.allowed is not None else self.normal_rate
        self._reset_at = state.reset_at if state is not None else None
        rate = allowed / self.workers
        if rate != self._rate:
            self._fill(now)
            self._rate = rate
            self._tokens = min(self._tokens, self.capacity)

    def _fill(self, now: float) -> None:
        self._tokens = min(self.capacity, self._tokens + (now - self._filled_at) * self._rate)
        self._filled_at = now

    @property
    def rate(self) -> float:
        """Requests per second this process may send now."""
        with self._mutex:
            self._refresh()
            return self._rate

    def _take(self, tokens: float) -> float:
        """Take ``tokens`` if available (returns 0.0), else the seconds to wait before retrying."""
        if tokens > self.capacity:
            raise ValueError(f"cannot take {tokens} tokens from a bucket of {self.capacity:g}")
        with self._mutex:
            self._refresh()
            hold = (self._reset_at - self._wall()) if self._reset_at is not None else 0.0
            if hold > 0:
                return hold
            now = self._monotonic()
            self._fill(now)
            if self._tokens >= tokens:
                self._tokens -= tokens
                return 0.0
            return (tokens - self._tokens) / self._rate

    def try_acquire(self, tokens: float = 1.0) -> bool:
        return self._take(tokens) == 0.0

    def _next_wait(self, tokens: float, timeout: float | None, waited: float) -> float | None:
        """Take ``tokens`` (None) or the seconds to sleep before retrying; TimeoutError past timeout."""
        wait = self._take(tokens)
        if wait == 0.0:
            return None
        wait = min(wait, self.refresh_seconds)
        if timeout is not None and waited + wait > timeout:
            raise TimeoutError(f"no token for {self.target} within {timeout:g}s")
        return wait

    def acquire(
        self, tokens: float = 1.0, timeout: float | None = None, sleep: Callable[[float], None] = time.sleep
    ) -> float:
        """Block until ``tokens`` are available; returns the seconds waited (TimeoutError past timeout)."""
        waited = 0.0
        while (wait := self._next_wait(tokens, timeout, waited)) is not None:
            sleep(wait)
            waited += wait
        return waited

    async def aacquire(self, tokens: float = 1.0, timeout: float | None = None) -> float:
        """``acquire`` for async code (sleeps with ``asyncio.sleep``)."""
        waited = 0.0
        while (wait := self._next_wait(tokens, timeout, waited)) is not None:
            await asyncio.sleep(wait)
            waited += wait
        return waited


def token_bucket_for(
    config: RecoveryConfig, target: str, *, workers: int = 1, burst: float | None = None
) -> TokenBucket:
    """The bucket pacing requests to ``target`` (an HTTP target) from this process."""
    t = config.target(target)
    if not isinstance(t, HttpTarget):
        raise ConfigError("target", f"'{target}' is a {t.kind} target; rate limits apply to http targets")
    state_url = config.state_url.get_secret_value() if config.state_url else None
    return TokenBucket(
        t.name,
        rate_store_for(state_url, config.state_timeout_seconds),
        normal_rate=t.rate_limit.normal_rate_per_second,
        burst=burst,
        workers=workers,
    )
