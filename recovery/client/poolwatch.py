"""Application side of a database pool reset (``reset_connection_pool``).

Import this in the application, not the recovery: it needs only SQLAlchemy and shared state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine

from recovery.backends.state import SharedState, open_state
from recovery.errors import StateUnavailable


class PoolGenerationWatcher:
    """Application side of the pool reset: dispose ``engine`` when the target's generation changes.

    A recovery's ``reset_connection_pool`` step bumps ``recovery:target:{name}:pool_generation``.
    The application calls ``check()`` before using its engine (cheap: shared state is read at most
    every ``interval_seconds``)::

        from recovery.client.poolwatch import PoolGenerationWatcher

        watcher = PoolGenerationWatcher(engine, "orders-db", "redis://state:6379/0")
        def handle_request() -> None:
            watcher.check()  # disposes the pool if a recovery reset it since the last check
            with engine.connect() as conn: ...

    The first check only records the generation. If shared state is unreachable the engine is
    kept as it is (``check()`` returns False) - the application must never fail because of it.
    """

    def __init__(
        self,
        engine: Engine,
        target: str,
        state_url: str | None = None,
        *,
        state: SharedState | None = None,
        interval_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.target = target
        self.state = state or open_state(state_url)
        self.interval_seconds = interval_seconds
        self.generation: int | None = None
        self._clock = clock
        self._next_check = 0.0
        self._lock = threading.Lock()

    def check(self) -> bool:
        """Dispose the engine if the generation changed since the last check; True if it did."""
        with self._lock:
            now = self._clock()
            if now < self._next_check:
                return False
            self._next_check = now + self.interval_seconds
            try:
                current = self.state.pool_generation(self.target)
            except StateUnavailable:
                return False
            changed = self.generation is not None and current != self.generation
            self.generation = current
        if changed:
            self.engine.dispose()
        return changed
