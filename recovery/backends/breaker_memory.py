"""The in-process breaker store (no ``state_url``): ``recovery.backends.breaker_core``'s
transitions applied under a mutex, which makes each one atomic within this process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from recovery.backends import breaker_core as core
from recovery.backends.breaker_core import BreakerSnapshot, Failure, Ticket
from recovery.backends.breaker_store import BreakerStore

T = TypeVar("T")


class MemoryBreakerStore(BreakerStore):
    """One process's breaker state; the state machine is the pure core, the mutex the atomicity."""

    description = "in-process"

    def __init__(
        self, target: str, ttl_seconds: float = 86400.0, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(target, ttl_seconds, clock, "memory")
        self._mutex = threading.Lock()
        self._record = core.Record()

    def _apply(self, step: Callable[[core.Record, float], tuple[core.Record, T]]) -> T:
        with self._mutex:
            self._record, answer = step(self._record, self.clock())
            return answer

    def admit(self, reset_timeout: float, lease_seconds: float, owner: str) -> Ticket:
        return self._apply(lambda r, now: core.admit(r, now, reset_timeout, lease_seconds, owner))

    def succeeded(self, owner: str, probe: bool, success_threshold: int) -> str:
        return self._apply(lambda r, now: core.succeeded(r, now, owner, probe, success_threshold))

    def failed(self, owner: str, probe: bool, fail_max: int) -> Failure:
        return self._apply(lambda r, now: core.failed(r, now, owner, probe, fail_max))

    def release(self, owner: str) -> None:
        self._apply(lambda r, now: core.release(r, now, owner))

    def refresh(self, owner: str, lease_seconds: float) -> bool:
        return self._apply(lambda r, now: core.refresh(r, now, owner, lease_seconds))

    def force(
        self, state: str, trip: bool = False, lease_owner: str | None = None, lease_seconds: float = 0.0
    ) -> str:
        return self._apply(lambda r, now: core.force(r, now, state, trip, lease_owner, lease_seconds))

    def close_lease(self, owner: str, action: str, lease_seconds: float = 0.0) -> bool:
        return self._apply(lambda r, now: core.close_lease(r, now, owner, action, lease_seconds))

    def snapshot(self) -> BreakerSnapshot:
        return self._apply(lambda r, now: (r, core.view(r, now)))
