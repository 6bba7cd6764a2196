"""The in-process breaker store (no ``state_url``): the same state machine as the Redis scripts
in ``recovery.backends.breaker_store``, made atomic by a mutex instead of Lua."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from recovery.backends.breaker_store import CLOSED, HALF_OPEN, OPEN, BreakerSnapshot, BreakerStore, Ticket

T = TypeVar("T")


class MemoryBreakerStore(BreakerStore):
    """The same state machine for one process (no ``state_url``); a mutex makes it atomic."""

    description = "in-process"

    def __init__(
        self, target: str, ttl_seconds: float = 86400.0, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(target, ttl_seconds, clock)
        self._mutex = threading.Lock()
        self._state = CLOSED
        self._fails = 0
        self._successes = 0
        self._opened_at: float | None = None
        self._lease: tuple[str, float] | None = None  # owner, expires at

    def _holder(self, now: float) -> str | None:
        if self._lease is not None and self._lease[1] <= now:
            self._lease = None
        return self._lease[0] if self._lease else None

    def _locked(self, fn: Callable[[float], T]) -> T:
        with self._mutex:
            return fn(self.clock())

    def _trip(self, now: float) -> None:
        self._state, self._opened_at, self._successes = OPEN, now, 0

    def _close(self) -> None:
        self._state, self._fails, self._successes, self._opened_at = CLOSED, 0, 0, None

    def admit(self, reset_timeout: float, lease_seconds: float, owner: str) -> Ticket:
        def step(now: float) -> Ticket:
            if self._state == CLOSED:
                return Ticket("pass", CLOSED, fail_counter=self._fails, owner=owner)
            if self._state == OPEN:
                remaining = (self._opened_at if self._opened_at is not None else now) + reset_timeout - now
                if remaining > 0:
                    return Ticket("reject", OPEN, retry_in=remaining, owner=owner)
            holder = self._holder(now)
            if holder is not None:
                return Ticket("reject", HALF_OPEN, holder=holder, owner=owner)
            seen = self._state
            self._lease = (owner, now + lease_seconds)
            if seen == OPEN:
                self._state, self._successes = HALF_OPEN, 0
            return Ticket("probe", seen, owner=owner)

        return self._locked(step)

    def succeeded(self, owner: str, probe: bool, success_threshold: int) -> str:
        def step(now: float) -> str:
            if probe:
                if self._state == HALF_OPEN and self._holder(now) == owner:
                    self._lease = None
                    self._successes += 1
                    if self._successes >= success_threshold:
                        self._close()
            elif self._state == CLOSED:
                self._fails = 0
            return self._state

        return self._locked(step)

    def failed(self, owner: str, probe: bool, fail_max: int) -> tuple[str, bool]:
        def step(now: float) -> tuple[str, bool]:
            if probe:
                if self._state == HALF_OPEN and self._holder(now) == owner:
                    self._lease = None
                    self._trip(now)
                    return OPEN, True
                return self._state, False
            if self._state != CLOSED:
                return self._state, False
            self._fails += 1
            if self._fails >= fail_max:
                self._trip(now)
                return OPEN, True
            return CLOSED, False

        return self._locked(step)

    def release(self, owner: str) -> None:
        def step(now: float) -> None:
            if self._holder(now) == owner:
                self._lease = None

        self._locked(step)

    def refresh(self, owner: str, lease_seconds: float) -> bool:
        def step(now: float) -> bool:
            if self._holder(now) != owner:
                return False
            self._lease = (owner, now + lease_seconds)
            return True

        return self._locked(step)

    def force(self, state: str, trip: bool = False) -> str:
        if state not in (CLOSED, OPEN, HALF_OPEN):
            raise ValueError(f"unknown breaker state {state!r}")

        def step(now: float) -> str:
            previous = self._state
            if trip and previous == OPEN:
                return previous
            if state == OPEN:
                self._trip(now)
            elif state == HALF_OPEN:
                self._state, self._successes = HALF_OPEN, 0
            else:
                self._close()
            self._lease = None
            return previous

        return self._locked(step)

    def snapshot(self) -> BreakerSnapshot:
        def step(now: float) -> BreakerSnapshot:
            holder = self._holder(now)
            ttl = self._lease[1] - now if self._lease is not None else None
            return BreakerSnapshot(self._state, self._fails, self._successes, self._opened_at, holder, ttl)

        return self._locked(step)
