"""Shared state: probe counters, recovery locks, paused flags, probe history, sliding windows.

One interface, two backends (one class each, like pybreaker's ``CircuitBreakerStorage``):
``RedisState`` (``state_redis.py``: several workers and the application agree) and
``MemoryState`` (``state_memory.py``: a single process, used when ``state_url`` is absent).
Redis read-modify-writes run as Lua scripts (``backends/lua/``) so concurrent monitors never
lose an update. Every key is spelled in ``recovery.backends.keys``, the key layout.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from recovery.backends.keys import PROBE_HISTORY_SIZE, window_key

if TYPE_CHECKING:
    from recovery.backends.window import SlidingWindow

SCAN_BATCH = 500


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
        """Take the one-recovery-per-target lock; False if anyone holds it (not re-entrant). Redis:
        a write whose reply never comes is undone (compare-and-delete) before the error is raised."""

    @abstractmethod
    def refresh_lock(self, target: str, owner: str, ttl_seconds: float) -> bool:
        """Extend the lock if ``owner`` still holds it (long recoveries call this per step)."""

    @abstractmethod
    def takeover_lock(self, target: str, old_owner: str, new_owner: str, ttl_seconds: float) -> bool:
        """Hand the lock from ``old_owner`` to ``new_owner`` (fresh TTL) if ``old_owner`` still
        holds it: a compare-and-set, so two emergencies taking over one run cannot both win.
        The old owner's next refresh fails and it stops (``RecoveryRuntime._start_attempt``).
        True also if ``new_owner`` holds it already (a retried call whose first try landed)."""

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

    @abstractmethod
    def resume_if_idle(self, target: str) -> bool:
        """Clear the paused flag if no recovery holds the target's lock (atomically); True if
        it was set and is now cleared. The monitor calls this for a target that is healthy
        again, so a flag whose recovery died never outlives the outage."""

    @abstractmethod
    def bump_pool_generation(self, target: str) -> int:
        """Increment ``target``'s connection-pool generation (applications then reconnect)."""

    @abstractmethod
    def pool_generation(self, target: str) -> int:
        """The current pool generation of ``target`` (0 until a recovery resets the pool)."""

    @property
    @abstractmethod
    def windows(self) -> SlidingWindow:
        """The sliding-window store on the same backend (manual-trigger limit, time_window)."""

    def window_hit(self, name: str, limit: int, window_seconds: float, now: float) -> WindowResult:
        """Count one hit in the sliding window ``name`` unless ``limit`` hits are already in it.

        Atomic across processes (a Lua script on Redis): 20 concurrent callers with limit 5
        admit exactly 5. Refused hits are not counted.
        """
        return self.windows.hit(window_key(name), limit, window_seconds, now)

    @abstractmethod
    def push_probe_history(self, target: str, healthy: bool, size: int = PROBE_HISTORY_SIZE) -> list[bool]:
        """Append a probe result to ``target``'s history (capped at ``size``); return it, oldest first."""

    @abstractmethod
    def probe_history(self, target: str) -> list[bool]:
        """The last probe results of ``target``, oldest first (flap detection)."""

    @abstractmethod
    def set_flapping(self, target: str, since: float | None) -> None:
        """Mark ``target`` flapping since ``since`` (epoch seconds), or clear the mark with None."""

    @abstractmethod
    def flapping_since(self, target: str) -> float | None:
        """When ``target`` started flapping, or None if it is not flapping."""

    # --- marks: small TTL'd strings at keys of ``recovery.backends.keys`` (ladders, waits) ---

    @abstractmethod
    def put_mark(self, key: str, value: str, ttl_seconds: float, only_new: bool = False) -> bool:
        """Set ``key`` to ``value`` for ``ttl_seconds``; with ``only_new``, only if it is unset
        (atomic: one caller of many wins). True if it was written."""

    @abstractmethod
    def get_marks(self, keys: list[str]) -> list[str | None]:
        """The values of ``keys`` (None: unset or expired), in one round trip."""

    @abstractmethod
    def clear_marks(self, keys: list[str]) -> int:
        """Delete ``keys``; how many existed."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# --- reading Redis values (shared with pipelined readers such as reporting/status.py) ----------


def parse_health(raw: dict[str, str]) -> HealthCounters | None:
    """A ``health_key`` hash as read from Redis (empty: never probed)."""
    if not raw:
        return None
    first = raw.get("first_failure_at")
    return HealthCounters(
        failures=int(raw.get("failures", 0)),
        successes=int(raw.get("successes", 0)),
        healthy=raw.get("healthy") == "1",
        reason=raw.get("reason", ""),
        probed_at=float(raw.get("probed_at", 0.0)),
        first_failure_at=float(first) if first else None,
    )


def parse_probe_history(newest_first: list[str]) -> list[bool]:
    """A ``probe_history_key`` list as read from Redis, oldest first."""
    return [v == "1" for v in reversed(newest_first)]


# --- Redis plumbing ------------------------------------------------------------------------------


DEFAULT_TIMEOUT_SECONDS = 2.0  # RecoveryConfig.state_timeout_seconds' default


def bounded_retry() -> Retry:
    """One immediate retry, on a dropped connection only.

    A pooled connection that a Redis restart closed fails its next command; one retry on a new
    connection hides that. A *timeout* is never retried: a frozen Redis stays frozen, and
    redis-py's default (10 retries with backoff) would turn a 2 s timeout into minutes.
    """
    return Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))


def redis_client(url: str, *, decode: bool = True, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> redis.Redis:
    """A client whose every call ends within ~``timeout`` (x2 if a dropped connection is retried):
    a dead or frozen Redis must fail a step, not hang a monitor cycle."""
    return redis.Redis.from_url(
        url,
        decode_responses=decode,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=bounded_retry(),
        health_check_interval=30,
    )


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


def open_state(url: str | None, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> SharedState:
    """Redis-backed state when ``url`` is set (calls time out after ``timeout`` s), else the
    process-wide in-memory state.

    A cheap constructor (no round trip: scripts are registered on first use); whoever needs one
    instance per process caches it.
    """
    # Imported here: both backends subclass SharedState, defined above.
    from recovery.backends.state_memory import process_state
    from recovery.backends.state_redis import RedisState

    return RedisState(url, timeout=timeout) if url else process_state()
