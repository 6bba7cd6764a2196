"""``RedisState``: shared state in Redis, so every worker and the application agree.

Read-modify-writes (probe counters, lock refresh/release, sliding windows) are Lua scripts from
``backends/lua/``, registered lazily once per client: constructing a ``RedisState`` costs no
round trip, and a script is loaded into Redis by its first call (EVALSHA, then SCRIPT LOAD).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import redis

from recovery.backends.keys import (
    PROBE_HISTORY_SIZE,
    flapping_key,
    health_key,
    lock_key,
    paused_key,
    pool_generation_key,
    probe_history_key,
)
from recovery.backends.lua import Scripts
from recovery.backends.state import (
    DEFAULT_TIMEOUT_SECONDS,
    HealthCounters,
    SharedState,
    parse_health,
    parse_probe_history,
    redis_client,
)
from recovery.backends.window import RedisWindow
from recovery.errors import StateUnavailable
from recovery.redact import redact, redact_url


class RedisState(SharedState):
    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.url = url
        self.description = f"redis ({redact_url(url)})"
        # Shared by the rate and window stores built on this state (one pool, one timeout).
        self.client = redis_client(url, timeout=timeout)
        self.scripts = Scripts(self.client)  # shared with the stores built on this client
        self._windows: RedisWindow | None = None

    def _call(self, fn: Callable[[], Any]) -> Any:  # redis-py returns are loosely typed
        try:
            return fn()
        except redis.RedisError as exc:
            raise StateUnavailable(f"shared state {redact_url(self.url)}: {redact(str(exc))}") from None

    def record_probe(self, target: str, healthy: bool, reason: str, now: float) -> HealthCounters:
        record = self.scripts("record_probe")
        args = ["1" if healthy else "0", reason, now]
        flat = self._call(lambda: record(keys=[health_key(target)], args=args))
        counters = parse_health(dict(zip(flat[::2], flat[1::2], strict=True)))
        assert counters is not None  # the script just wrote the hash
        return counters

    def health(self, target: str) -> HealthCounters | None:
        return parse_health(self._call(lambda: self.client.hgetall(health_key(target))))

    def _undone_if_lost(self, write: Callable[[], Any], undo: Callable[[], Any]) -> Any:
        """``write()``; if its reply never comes, ``undo()`` once (best effort) and raise.

        A write whose reply is lost may still have landed, and a lock or mark nobody will use
        would then stay for its whole TTL (the lock's minutes, a mark's days). ``undo`` is a
        compare-and-delete/-set on this caller's own value: never someone else's. A stall
        shorter than the two timeouts leaves nothing behind; a longer one leaves the TTL."""
        try:
            return self._call(write)
        except StateUnavailable:
            with contextlib.suppress(StateUnavailable):
                self._call(undo)
            raise

    def acquire_lock(self, target: str, owner: str, ttl_seconds: float) -> bool:
        ttl, key = max(1, int(ttl_seconds * 1000)), lock_key(target)
        release = self.scripts("release_lock")
        set_nx = lambda: self.client.set(key, owner, nx=True, px=ttl)  # noqa: E731
        # Not re-entrant: a retried SET NX that landed (reply lost, bounded_retry) answers False,
        # and callers whose owner tokens are unique read the lock's owner to tell (runtime, monitor).
        return bool(self._undone_if_lost(set_nx, lambda: release(keys=[key], args=[owner])))

    def refresh_lock(self, target: str, owner: str, ttl_seconds: float) -> bool:
        ttl = max(1, int(ttl_seconds * 1000))
        refresh = self.scripts("refresh_lock")
        return bool(self._call(lambda: refresh(keys=[lock_key(target)], args=[owner, ttl])))

    def takeover_lock(self, target: str, old_owner: str, new_owner: str, ttl_seconds: float) -> bool:
        ttl, key = max(1, int(ttl_seconds * 1000)), lock_key(target)
        takeover = self.scripts("takeover_lock")  # a retried call that had landed counts as taken
        take = lambda: takeover(keys=[key], args=[old_owner, new_owner, ttl])  # noqa: E731
        give_back = lambda: takeover(keys=[key], args=[new_owner, old_owner, ttl])  # noqa: E731
        return bool(self._undone_if_lost(take, give_back))

    def release_lock(self, target: str, owner: str) -> bool:
        release = self.scripts("release_lock")
        return bool(self._call(lambda: release(keys=[lock_key(target)], args=[owner])))

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

    def resume_if_idle(self, target: str) -> bool:
        resume = self.scripts("resume_if_idle")
        return bool(self._call(lambda: resume(keys=[paused_key(target), lock_key(target)])))

    def bump_pool_generation(self, target: str) -> int:
        return int(self._call(lambda: self.client.incr(pool_generation_key(target))))

    def pool_generation(self, target: str) -> int:
        value = self._call(lambda: self.client.get(pool_generation_key(target)))
        return int(value) if value is not None else 0

    @property
    def windows(self) -> RedisWindow:
        # Shares this client (one connection pool) and its registered scripts.
        if self._windows is None:
            self._windows = RedisWindow(self.client, f"shared state {redact_url(self.url)}", self.scripts)
        return self._windows

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

    def put_mark(self, key: str, value: str, ttl_seconds: float, only_new: bool = False) -> bool:
        ttl = max(1, int(ttl_seconds * 1000))
        if not only_new:
            return bool(self._call(lambda: self.client.set(key, value, px=ttl)))
        # An only-new mark claims a once-per-incident duty (dependencies.refuse_once): one left
        # behind by a lost reply would silence that duty for the mark's whole TTL. The
        # compare-and-delete script is generic over its key.
        release = self.scripts("release_lock")
        set_nx = lambda: self.client.set(key, value, px=ttl, nx=True)  # noqa: E731
        if self._undone_if_lost(set_nx, lambda: release(keys=[key], args=[value])):
            return True
        return bool(self._call(lambda: self.client.get(key)) == value)  # a retried SET NX that landed

    def get_marks(self, keys: list[str]) -> list[str | None]:
        if not keys:
            return []
        return [None if v is None else str(v) for v in self._call(lambda: self.client.mget(keys))]

    def clear_marks(self, keys: list[str]) -> int:
        return int(self._call(lambda: self.client.delete(*keys))) if keys else 0

    def close(self) -> None:
        self.client.close()
