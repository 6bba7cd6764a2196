"""Sliding windows: hit times in named sets, admitted only while every limit has room.

Two users, one store and one Lua script (``lua/sliding_window.lua``):

* ``SharedState.window_hit``: the manual-trigger limit (``recovery:window:{name}``): one limit,
  a refused hit is not counted;
* ``RecoveryWindow``: the time_window strategy (``recovery:target:{name}:recoveries``): several
  limits over one set, an emergency run is counted but never refused, and a run that took a
  slot but never started gives it back by owner.

A member is ``{now!r}|{owner}`` (score = ``now``): unique per hit, and the owner suffix is what
``give_back`` matches. Backends: ``RedisWindow`` (atomic across workers) and ``MemoryWindow``.
"""

from __future__ import annotations

import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from recovery.backends.keys import recoveries_key
from recovery.backends.lua import Scripts
from recovery.backends.state import SharedState, WindowResult
from recovery.config.strategy import WindowSlot
from recovery.errors import StateUnavailable
from recovery.redact import redact

FIRST_LIMIT_ARG = 5  # sliding_window.lua: the (limit, window) pairs start at ARGV[5]


@dataclass(frozen=True)
class Limit:
    """At most ``limit`` hits in the last ``window_seconds``."""

    limit: int
    window_seconds: float


@dataclass(frozen=True)
class Admitted:
    """``full`` is None when the hit was added, else the index of the first full limit."""

    full: int | None
    count: int  # hits in the longest window after adding, or in the full limit's window
    retry_after_seconds: float  # until the full limit frees a slot (0 when added)


def member(now: float, owner: str) -> str:
    return f"{now!r}|{owner}"


class SlidingWindow(ABC):
    """Hit times per key; ``add`` is atomic (trim, count against every limit, add)."""

    @abstractmethod
    def add(self, key: str, owner: str, now: float, limits: Sequence[Limit], force: bool = False) -> Admitted:
        """Add a hit of ``owner`` at ``now`` unless a limit is full (``force``: add regardless).

        Hits older than the longest window are dropped.
        """

    @abstractmethod
    def times(self, key: str, since: float) -> list[float]:
        """Hit times after ``since`` (exclusive), oldest first."""

    @abstractmethod
    def remove_owner(self, key: str, owner: str) -> int:
        """Drop every hit of ``owner``; returns how many."""

    def hit(self, key: str, limit: int, window_seconds: float, now: float) -> WindowResult:
        """One hit against one limit (the manual-trigger limit): refused hits are not counted."""
        done = self.add(key, uuid.uuid4().hex, now, [Limit(limit, window_seconds)])
        return WindowResult(done.full is None, done.count, max(0.0, done.retry_after_seconds))


class RedisWindow(SlidingWindow):
    """Sorted sets in Redis (score = hit time), trimmed and added to by one Lua script."""

    def __init__(
        self, client: redis.Redis, what: str = "sliding window", scripts: Scripts | None = None
    ) -> None:
        self.client = client
        self.what = what  # prefix of StateUnavailable messages (already redacted)
        self.scripts = scripts or Scripts(client)

    def _call(self, fn: Callable[[], Any]) -> Any:  # redis-py returns are loosely typed
        try:
            return fn()
        except (redis.RedisError, OSError) as exc:
            raise StateUnavailable(f"{self.what}: {redact(str(exc))}") from None

    def add(self, key: str, owner: str, now: float, limits: Sequence[Limit], force: bool = False) -> Admitted:
        run = self.scripts("sliding_window")
        keep = max(lm.window_seconds for lm in limits)
        args: list[str | int] = [repr(now), member(now, owner), repr(keep), "1" if force else "0"]
        for lm in limits:
            args += [lm.limit, repr(lm.window_seconds)]
        full, count, retry = self._call(lambda: run(keys=[key], args=args))
        index = (int(full) - FIRST_LIMIT_ARG) // 2 if int(full) else None
        return Admitted(index, int(count), float(retry))

    def times(self, key: str, since: float) -> list[float]:
        raw = self._call(lambda: self.client.zrangebyscore(key, f"({since!r}", "+inf", withscores=True))
        return [float(score) for _, score in raw]

    def remove_owner(self, key: str, owner: str) -> int:
        members = self._call(lambda: self.client.zrange(key, 0, -1))
        mine = [m for m in members if str(m).endswith(f"|{owner}")]
        return int(self._call(lambda: self.client.zrem(key, *mine))) if mine else 0


class MemoryWindow(SlidingWindow):
    """The same windows in this process (no ``state_url``)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._sets: dict[str, dict[str, float]] = {}

    def add(self, key: str, owner: str, now: float, limits: Sequence[Limit], force: bool = False) -> Admitted:
        keep = max(lm.window_seconds for lm in limits)
        with self._mutex:
            hits = {m: t for m, t in self._sets.get(key, {}).items() if t > now - keep}
            self._sets[key] = hits  # trimmed even when refused, as the script does
            if not force:
                for index, lm in enumerate(limits):
                    inside = [t for t in hits.values() if t > now - lm.window_seconds]
                    if len(inside) >= lm.limit:
                        retry = min(inside) + lm.window_seconds - now if inside else 0.0
                        return Admitted(index, len(inside), retry)
            hits[member(now, owner)] = now
            return Admitted(None, len(hits), 0.0)

    def times(self, key: str, since: float) -> list[float]:
        with self._mutex:
            return sorted(t for t in self._sets.get(key, {}).values() if t > since)

    def remove_owner(self, key: str, owner: str) -> int:
        with self._mutex:
            hits = self._sets.get(key, {})
            mine = [m for m in hits if m.endswith(f"|{owner}")]
            for m in mine:
                del hits[m]
            return len(mine)


class RecoveryWindow:
    """Start times of a target's recent recoveries, shared by every worker (time_window)."""

    def __init__(self, store: SlidingWindow) -> None:
        self.store = store

    def recent(self, target: str, now: float, window_seconds: float) -> tuple[float, ...]:
        return tuple(self.store.times(recoveries_key(target), now - window_seconds))

    def take(self, target: str, run_id: str, now: float, slots: tuple[WindowSlot, ...]) -> WindowSlot | None:
        """Add ``run_id`` unless a slot's window is full; returns the full slot, None when taken."""
        limits = [Limit(s.max_recoveries, s.window_seconds) for s in slots]
        done = self.store.add(recoveries_key(target), run_id, now, limits, force=any(s.force for s in slots))
        return slots[done.full] if done.full is not None else None

    def give_back(self, target: str, run_id: str, now: float) -> None:
        """Remove a run that took a slot but never started (its audit row could not be written)."""
        self.store.remove_owner(recoveries_key(target), run_id)


def recovery_window(state: SharedState) -> RecoveryWindow:
    """The time_window history on ``state``'s backend (cheap: wraps ``state.windows``)."""
    return RecoveryWindow(state.windows)
