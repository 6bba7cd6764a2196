"""``MemoryState``: shared state of a single process (no ``state_url``).

Behaves like ``RedisState`` where it matters: locks expire after their TTL (a crashed run
cannot block its target forever), and every operation is atomic under one mutex.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from recovery.backends.keys import PROBE_HISTORY_SIZE
from recovery.backends.state import HealthCounters, SharedState
from recovery.backends.window import MemoryWindow


class MemoryState(SharedState):
    """Single-process state; locks still expire so behaviour matches Redis."""

    description = "in-process"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._mutex = threading.Lock()
        self._health: dict[str, HealthCounters] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._paused: dict[str, str] = {}
        self._windows = MemoryWindow()
        self._generations: dict[str, int] = {}
        self._probe_history: dict[str, list[bool]] = {}
        self._flapping: dict[str, float] = {}
        self._marks: dict[str, tuple[str, float]] = {}  # key -> (value, expires at, clock time)

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

    def takeover_lock(self, target: str, old_owner: str, new_owner: str, ttl_seconds: float) -> bool:
        with self._mutex:
            owner = self._live_owner(target)
            if owner == new_owner:
                return True  # as the Redis script: already taken (a retried call)
            if owner != old_owner:
                return False
            self._locks[target] = (new_owner, self._clock() + ttl_seconds)
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

    def resume_if_idle(self, target: str) -> bool:
        with self._mutex:
            if self._live_owner(target) is not None:
                return False
            return self._paused.pop(target, None) is not None

    @property
    def windows(self) -> MemoryWindow:
        return self._windows

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

    def _live_mark(self, key: str) -> str | None:
        held = self._marks.get(key)
        if held is None or held[1] > self._clock():
            return None if held is None else held[0]
        del self._marks[key]
        return None

    def put_mark(self, key: str, value: str, ttl_seconds: float, only_new: bool = False) -> bool:
        with self._mutex:
            if only_new and self._live_mark(key) is not None:
                return False
            self._marks[key] = (value, self._clock() + ttl_seconds)
            return True

    def get_marks(self, keys: list[str]) -> list[str | None]:
        with self._mutex:
            return [self._live_mark(k) for k in keys]

    def clear_marks(self, keys: list[str]) -> int:
        with self._mutex:
            return sum(self._live_mark(k) is not None and self._marks.pop(k) is not None for k in keys)


# One MemoryState per process: the monitor and the recovery subflows it starts run in the same
# process and must see the same locks and flags (open_state(None) returns it).
_process_state = MemoryState()


def process_state() -> MemoryState:
    """The in-memory state every ``open_state(None)`` of this process shares."""
    return _process_state
