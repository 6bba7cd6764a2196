"""When to publish the status board again: on a change, plus a heartbeat (no Prefect here).

The ``recovery-status`` artifact used to get a new version every monitor cycle: an API write,
a stored version and an event per cycle even when nothing changed (a fleet that is healthy
all day). ``BoardGate`` publishes a table only when a row differs from the last one published,
or when the last publication is older than ``heartbeat_seconds``: the board's own timestamp
then says how fresh it is, so a board that stopped updating (a dead monitor) is visible as old
rather than silently looking current. A change is published by the cycle that sees it, so the
board stays current within one monitor interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

Table = Sequence[dict[str, str]]


class BoardGate:
    """Remembers the last published table of one publisher (one monitor process)."""

    def __init__(self, heartbeat_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.heartbeat_seconds = heartbeat_seconds
        self._clock = clock
        self._last: list[dict[str, str]] | None = None
        self._at: float | None = None

    def due(self, table: Table) -> bool:
        """True if ``table`` should be published now (changed, first, or heartbeat due)."""
        if self._last is None or self._at is None:
            return True
        if [dict(r) for r in table] != self._last:
            return True
        return self._clock() - self._at >= self.heartbeat_seconds

    def published(self, table: Table) -> None:
        """Record a successful publication (a failed one is retried by the next cycle)."""
        self._last = [dict(r) for r in table]
        self._at = self._clock()
