"""Shared state: probe counters, recovery locks, paused flags.

Two backends with one interface: ``RedisState`` (several workers and the application agree)
and ``MemoryState`` (single process, used when ``state_url`` is absent). Redis operations that
read-modify-write run as Lua scripts so concurrent monitors never lose an update.

Key layout (all under the ``recovery:`` prefix, see ARCHITECTURE.md):
    recovery:target:{name}:health   hash  failures, successes, healthy, reason, probed_at,
                                          first_failure_at
    recovery:target:{name}:lock     str   owner token; PX ttl so a crashed run cannot block
    recovery:target:{name}:paused   str   reason the target was paused
    recovery:target:{name}:pool_generation  int  bumped by a pool reset; applications reconnect
    recovery:target:{name}:probes   list  last 21 probe results, newest first ("1"/"0")
    recovery:target:{name}:flapping str   epoch seconds the target started flapping
    pybreaker:recovery:breaker:{name}:{state,fail_counter,...}  pybreaker's own keys
"""

from __future__ import annotations

import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from recovery.errors import StateUnavailable
from recovery.redact import redact, redact_url

PREFIX = "recovery"
SCAN_BATCH = 500


def health_key(target: str) -> str:
    return f"{PREFIX}:target:{target}:health"


def lock_key(target: str) -> str:
    return f"{PREFIX}:target:{target}:lock"


def paused_key(target: str) -> str:
    return f"{PREFIX}:target:{target}:paused"


def pool_generation_key(target: str) -> str:
    return f"{PREFIX}:target:{target}:pool_generation"


def probe_history_key(target: str) -> str:
    return f"{PREFIX}:target:{target}:probes"


def flapping_key(target: str) -> str:
    return f"{PREFIX}:target:{target}:flapping"


PROBE_HISTORY_SIZE = 21  # Nagios' flap-detection window (recovery/flapping.py)


@dataclass(frozen=True)
class HealthCounters:
    """Consecutive probe results of one target, as the monitor last recorded them."""

    failures: int
    successes: int
    healthy: bool
    reason: str
    probed_at: float
    first_failure_at: float | None


@dataclass(frozen=True)
class WindowResult:
    """Outcome of a sliding-window admission: allowed, hits in the window, wait if refused."""

    allowed: bool
    count: int
    retry_after_seconds: float


def window_key(name: str) -> str:
    return f"{PREFIX}:window:{name}"


class SharedState(ABC):
    """State that every monitor, recovery flow and the application must agree on."""

    description: str

    @abstractmethod
    def record_probe(self, target: str, healthy: bool, reason: str, now: float) -> HealthCounters:
        """Atomically bump the consecutive success or failure count of ``target``."""

    @abstractmethod
    def health(self, target: str) -> HealthCounters | None: ...

    @abstractmethod
    def acquire_lock(self, target: str, owner: str, ttl_seconds: float) -> bool:
        """Take the one-recovery-per-target lock; False if someone else holds it."""

    @abstractmethod
    def refresh_lock(self, target: str, owner: str, ttl_seconds: float) -> bool:
        """Extend the lock if ``owner`` still holds it (long recoveries call this per step)."""

    @abstractmethod
    def release_lock(self, target: str, owner: str) -> bool:
        """Release the lock only if ``owner`` holds it (never someone else's)."""

    @abstractmethod
    def lock_owner(self, target: str) -> str | None: ...

    @abstractmethod
    def set_paused(self, target: str, reason: str) -> None: ...

    @abstractmethod
    def clear_paused(self, target: str) -> bool:
        """Clear the paused flag; True if it was set."""

    @abstractmethod
    def paused(self, target: str) -> str | None: ...

    def bump_pool_generation(self, target: str) -> int:
        """Increment ``target``'s connection-pool generation (applications then reconnect)."""
        raise NotImplementedError(f"{type(self).__name__} does not track pool generations")

    def pool_generation(self, target: str) -> int:
        """The current pool generation of ``target`` (0 until a recovery resets the pool)."""
        raise NotImplementedError(f"{type(self).__name__} does not track pool generations")

    @abstractmethod
    def window_hit(self, name: str, limit: int, window_seconds: float, now: float) -> WindowResult:
        """Count one hit in the sliding window ``name`` unless ``limit`` hits are already in it.

        Atomic across processes (a Lua script on Redis): 20 concurrent callers with limit 5
        admit exactly 5. Refused hits are not counted.
        """

    def push_probe_history(self, target: str, healthy: bool, size: int = PROBE_HISTORY_SIZE) -> list[bool]:
        """Append a probe result to ``target``'s history (capped at ``size``); return it, oldest first."""
        raise NotImplementedError(f"{type(self).__name__} does not keep probe history")

    def probe_history(self, target: str) -> list[bool]:
        """The last probe results of ``target``, oldest first (flap detection)."""
        raise NotImplementedError(f"{type(self).__name__} does not keep probe history")

    def set_flapping(self, target: str, since: float | None) -> None:
        """Mark ``target`` flapping since ``since`` (epoch seconds), or clear the mark with None."""
        raise NotImplementedError(f"{type(self).__name__} does not track flapping")

    def flapping_since(self, target: str) -> float | None:
        """When ``target`` started flapping, or None if it is not flapping."""
        raise NotImplementedError(f"{type(self).__name__} does not track flapping")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# --- Redis -----------------------------------------------------------------------------------

_RECORD_PROBE = """
local key = KEYS[1]
local healthy = ARGV[1] == '1'
if healthy then
  redis.call('HINCRBY', key, 'successes', 1)
  redis.call('HSET', key, 'failures', 0, 'healthy', 1, 'reason', ARGV[2], 'probed_at', ARGV[3])
  redis.call('HDEL', key, 'first_failure_at')
else
  local failures = redis.call('HINCRBY', key, 'failures', 1)
  redis.call('HSET', key, 'successes', 0, 'healthy', 0, 'reason', ARGV[2], 'probed_at', ARGV[3])
  if failures == 1 then redis.call('HSET', key, 'first_failure_at', ARGV[3]) end
end
return redis.call('HGETALL', key)
"""

_REFRESH_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_WINDOW_HIT = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
if count < limit then
  redis.call('ZADD', key, now, ARGV[4])
  redis.call('PEXPIRE', key, math.ceil(window * 1000))
  return {1, count + 1, '0'}
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return {0, count, tostring(tonumber(oldest[2]) + window - now)}
"""

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _counters(raw: dict[str, str]) -> HealthCounters:
    first = raw.get("first_failure_at")
    return HealthCounters(
        failures=int(raw.get("failures", 0)),
        successes=int(raw.get("successes", 0)),
        healthy=raw.get("healthy") == "1",
        reason=raw.get("reason", ""),
        probed_at=float(raw.get("probed_at", 0.0)),
        first_failure_at=float(first) if first else None,
    )


def parse_health(raw: dict[str, str]) -> HealthCounters | None:
    """A ``health_key`` hash as read from Redis (empty: never probed); for pipelined readers."""
    return _counters(raw) if raw else None


def parse_probe_history(newest_first: list[str]) -> list[bool]:
    """A ``probe_history_key`` list as read from Redis, oldest first."""
    return [v == "1" for v in reversed(newest_first)]


def redis_client(url: str, *, decode: bool = True, timeout: float = 2.0) -> redis.Redis:
    """A client with short timeouts: a dead Redis must fail a step, not hang a monitor cycle."""
    return redis.Redis.from_url(
        url,
        decode_responses=decode,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )


class RedisState(SharedState):
    def __init__(self, url: str) -> None:
        self.url = url
        self.description = f"redis ({redact_url(url)})"
        self.client = redis_client(url)
        self._record = self.client.register_script(_RECORD_PROBE)
        self._refresh = self.client.register_script(_REFRESH_LOCK)
        self._release = self.client.register_script(_RELEASE_LOCK)
        self._window = self.client.register_script(_WINDOW_HIT)

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except redis.RedisError as exc:
            raise StateUnavailable(f"shared state {redact_url(self.url)}: {redact(str(exc))}") from None

    def record_probe(self, target: str, healthy: bool, reason: str, now: float) -> HealthCounters:
        flat = self._call(
            lambda: self._record(keys=[health_key(target)], args=["1" if healthy else "0", reason, now])
        )
        return _counters(dict(zip(flat[::2], flat[1::2], strict=True)))

    def health(self, target: str) -> HealthCounters | None:
        raw = self._call(lambda: self.client.hgetall(health_key(target)))
        return _counters(raw) if raw else None

    def acquire_lock(self, target: str, owner: str, ttl_seconds: float) -> bool:
        ttl = max(1, int(ttl_seconds * 1000))
        return bool(self._call(lambda: self.client.set(lock_key(target), owner, nx=True, px=ttl)))

    def refresh_lock(self, target: str, owner: str, ttl_seconds: float) -> bool:
        ttl = max(1, int(ttl_seconds * 1000))
        return bool(self._call(lambda: self._refresh(keys=[lock_key(target)], args=[owner, ttl])))

    def release_lock(self, target: str, owner: str) -> bool:
        return bool(self._call(lambda: self._release(keys=[lock_key(target)], args=[owner])))

    def lock_owner(self, target: str) -> str | None:
        value = self._call(lambda: self.client.get(lock_key(target)))
        return str(value) if value is not None else None

    def set_paused(self, target: str, reason: str) -> None:
        self._call(lambda: self.client.set(paused_key(target), reason))

    def clear_paused(self, target: str) -> bool:
        return bool(self._call(lambda: self.client.delete(paused_key(target))))

    def paused(self, target: str) -> str | None:
        value = self._call(lambda: self.client.get(paused_key(target)))
        return str(value) if value is not None else None

    def bump_pool_generation(self, target: str) -> int:
        return int(self._call(lambda: self.client.incr(pool_generation_key(target))))

    def pool_generation(self, target: str) -> int:
        value = self._call(lambda: self.client.get(pool_generation_key(target)))
        return int(value) if value is not None else 0

    def window_hit(self, name: str, limit: int, window_seconds: float, now: float) -> WindowResult:
        member = f"{now}:{uuid.uuid4().hex}"
        allowed, count, retry = self._call(
            lambda: self._window(keys=[window_key(name)], args=[now, window_seconds, limit, member])
        )
        return WindowResult(bool(allowed), int(count), max(0.0, float(retry)))

    def push_probe_history(self, target: str, healthy: bool, size: int = PROBE_HISTORY_SIZE) -> list[bool]:
        key = probe_history_key(target)

        def push() -> list[Any]:
            with self.client.pipeline(transaction=True) as pipe:  # MULTI/EXEC: push, cap, read
                pipe.lpush(key, "1" if healthy else "0")
                pipe.ltrim(key, 0, size - 1)
                pipe.lrange(key, 0, -1)
                return list(pipe.execute())

        return parse_probe_history(self._call(push)[2])

    def probe_history(self, target: str) -> list[bool]:
        return parse_probe_history(self._call(lambda: self.client.lrange(probe_history_key(target), 0, -1)))

    def set_flapping(self, target: str, since: float | None) -> None:
        if since is None:
            self._call(lambda: self.client.delete(flapping_key(target)))
        else:
            self._call(lambda: self.client.set(flapping_key(target), repr(since)))

    def flapping_since(self, target: str) -> float | None:
        value = self._call(lambda: self.client.get(flapping_key(target)))
        return float(value) if value is not None else None

    def close(self) -> None:
        self.client.close()


# --- in-process --------------------------------------------------------------------------------


class MemoryState(SharedState):
    """Single-process state; locks still expire so behaviour matches Redis."""

    description = "in-process"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._mutex = threading.Lock()
        self._health: dict[str, HealthCounters] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._paused: dict[str, str] = {}
        self._windows: dict[str, list[float]] = {}
        self._generations: dict[str, int] = {}
        self._probe_history: dict[str, list[bool]] = {}
        self._flapping: dict[str, float] = {}

    def record_probe(self, target: str, healthy: bool, reason: str, now: float) -> HealthCounters:
        with self._mutex:
            old = self._health.get(target)
            if healthy:
                new = HealthCounters(0, (old.successes if old else 0) + 1, True, reason, now, None)
            else:
                failures = (old.failures if old else 0) + 1
                first = old.first_failure_at if old and old.failures else now
                new = HealthCounters(failures, 0, False, reason, now, first)
            self._health[target] = new
            return new

    def health(self, target: str) -> HealthCounters | None:
        with self._mutex:
            return self._health.get(target)

    def _live_owner(self, target: str) -> str | None:
        held = self._locks.get(target)
        if held is None:
            return None
        if held[1] <= self._clock():
            del self._locks[target]
            return None
        return held[0]

    def acquire_lock(self, target: str, owner: str, ttl_seconds: float) -> bool:
        with self._mutex:
            if self._live_owner(target) is not None:
                return False
            self._locks[target] = (owner, self._clock() + ttl_seconds)
            return True

    def refresh_lock(self, target: str, owner: str, ttl_seconds: float) -> bool:
        with self._mutex:
            if self._live_owner(target) != owner:
                return False
            self._locks[target] = (owner, self._clock() + ttl_seconds)
            return True

    def release_lock(self, target: str, owner: str) -> bool:
        with self._mutex:
            if self._live_owner(target) != owner:
                return False
            del self._locks[target]
            return True

    def lock_owner(self, target: str) -> str | None:
        with self._mutex:
            return self._live_owner(target)

    def set_paused(self, target: str, reason: str) -> None:
        with self._mutex:
            self._paused[target] = reason

    def clear_paused(self, target: str) -> bool:
        with self._mutex:
            return self._paused.pop(target, None) is not None

    def paused(self, target: str) -> str | None:
        with self._mutex:
            return self._paused.get(target)

    def window_hit(self, name: str, limit: int, window_seconds: float, now: float) -> WindowResult:
        with self._mutex:
            hits = [t for t in self._windows.get(name, []) if t > now - window_seconds]
            if len(hits) < limit:
                hits.append(now)
                self._windows[name] = hits
                return WindowResult(True, len(hits), 0.0)
            self._windows[name] = hits
            return WindowResult(False, len(hits), max(0.0, min(hits) + window_seconds - now))

    def bump_pool_generation(self, target: str) -> int:
        with self._mutex:
            self._generations[target] = self._generations.get(target, 0) + 1
            return self._generations[target]

    def pool_generation(self, target: str) -> int:
        with self._mutex:
            return self._generations.get(target, 0)

    def push_probe_history(self, target: str, healthy: bool, size: int = PROBE_HISTORY_SIZE) -> list[bool]:
        with self._mutex:
            history = [*self._probe_history.get(target, []), healthy][-size:]
            self._probe_history[target] = history
            return list(history)

    def probe_history(self, target: str) -> list[bool]:
        with self._mutex:
            return list(self._probe_history.get(target, []))

    def set_flapping(self, target: str, since: float | None) -> None:
        with self._mutex:
            if since is None:
                self._flapping.pop(target, None)
            else:
                self._flapping[target] = since

    def flapping_since(self, target: str) -> float | None:
        with self._mutex:
            return self._flapping.get(target)


# One MemoryState per process: the monitor and the recovery subflows it starts run in the same
# process and must see the same locks and flags.
_memory_state = MemoryState()


def open_state(url: str | None) -> SharedState:
    """Redis-backed state when ``url`` is set, else the process-wide in-memory state."""
    return RedisState(url) if url else _memory_state


def scan_delete(client: redis.Redis, pattern: str, batch: int = SCAN_BATCH) -> int:
    """Delete keys matching ``pattern`` with SCAN (never KEYS: it blocks Redis) in batches."""
    deleted = 0
    keys: list[Any] = []
    for key in client.scan_iter(match=pattern, count=batch):
        keys.append(key)
        if len(keys) >= batch:
            deleted += int(client.unlink(*keys))
            keys.clear()
    if keys:
        deleted += int(client.unlink(*keys))
    return deleted
