"""The served monitor's period: when its cycles run, how long it drains, how it reports.

One flow run of the ``monitor`` deployment runs cycles for ``monitor.period_seconds`` (see
flows/monitor_period.py). Its cycles sit on a grid anchored at the run's *scheduled* start:
``anchor + k * interval`` for every k with a slot before ``anchor + period``. The next period's
run is scheduled at exactly ``anchor + period``, so consecutive period runs continue one grid:
no gap (the runner starts a run ``prefetch_seconds`` before its time; it waits for its anchor)
and no double cycle (the earlier run has no slot at or after the later one's anchor, and
double probes would count one failure twice). A cycle that overruns skips the slots it
missed instead of queueing them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from recovery.backends.keys import monitor_slot_key
from recovery.backends.state import SharedState

OUTCOMES = ("succeeded", "refused", "failed", "cancelled")
MAX_PREFETCH_SECONDS = 60.0


@dataclass(frozen=True)
class Period:
    anchor: float  # epoch seconds: the run's scheduled start
    interval: float
    length: float

    @property
    def end(self) -> float:
        return self.anchor + self.length

    def grid_slot(self, now: float) -> float:
        """The first slot of the grid at or after ``now`` (epoch seconds)."""
        if now <= self.anchor:
            return self.anchor
        return self.anchor + math.ceil((now - self.anchor) / self.interval - 1e-9) * self.interval

    def first_slot(self, now: float) -> float | None:
        """The run's first cycle: its anchor, or the grid's next slot if it started late (the
        previous run hands over on the grid, so cycling at once could probe twice within one
        interval and count one failure twice). None if the whole period has passed."""
        return self.next_slot(now)

    def next_slot(self, now: float, handing_over: bool = False) -> float | None:
        """The next slot at or after ``now``; None once the period is over, or, while
        ``handing_over`` (no successor is cycling yet), once ``handover_by`` has passed."""
        slot = self.grid_slot(now)
        return slot if slot < (self.handover_by if handing_over else self.end) - 1e-9 else None

    @property
    def handover_by(self) -> float:
        """A run whose successor has not started cycling by its end keeps cycling on the grid
        (checking before each slot) until this: a slow process start (5-15 s on a busy
        machine) leaves no gap. A quarter of a period, then it stops (a paused schedule)."""
        return self.end + self.length / 4

    @property
    def drain_seconds(self) -> float:
        """How long the run waits for its recoveries after its last cycle (a quarter of a
        period). Recoveries still running then are cancelled (audited ``cancelled``, lock
        released); the next period's cycles start them again. With the hand-over and
        ``prefetch_seconds`` below, at most two period runs are ever alive: the deployment's
        concurrency limit is 2, and a third would be cancelled, not queued."""
        return self.length / 4

    @property
    def prefetch_seconds(self) -> float:
        """How early the runner starts a period run's process (``serve(prefetch_seconds=...)``).

        Starting a flow run's process costs ~3 s CPU (5-15 s wall on a busy machine) and the
        runner polls every 10 s; started early, the run is waiting at its anchor (Prefect holds
        it ``Pending`` until its scheduled time). A third of a period, at most a minute: the
        previous run is gone by ``end + length / 2`` (hand-over + drain), before this run's
        successor is started."""
        return min(self.length / 3, MAX_PREFETCH_SECONDS)


def summarize(cycles: int, outcomes: Iterable[Mapping[str, Any]]) -> str:
    """The period run's state message, e.g. "60 cycles; 2 recoveries: 1 succeeded, 1 refused"."""
    counts = Counter(str(o.get("state")) for o in outcomes)
    total = sum(counts.values())
    head = f"{cycles} cycle{'s' if cycles != 1 else ''}"
    if not total:
        return f"{head}; no recoveries"
    parts = [f"{counts[s]} {s}" for s in OUTCOMES if counts[s]]
    parts += [f"{n} {s}" for s, n in sorted(counts.items()) if s not in OUTCOMES]
    return f"{head}; {total} recover{'ies' if total != 1 else 'y'}: {', '.join(parts)}"


def claim_slot(state: SharedState, deployment: str, slot: float, run_id: str, period: Period) -> bool:
    """May run ``run_id`` cycle ``slot`` of ``deployment``'s grid? The first period run to
    claim a slot cycles it; the claim is idempotent for its owner (``put_mark``).

    A claim that cannot be made (state unavailable, bounded by ``state_timeout_seconds``)
    counts as granted: that cycle defers every target anyway, and a skipped slot would be a gap
    in the report."""
    try:
        return state.put_mark(monitor_slot_key(deployment, slot), run_id, 2 * period.length, only_new=True)
    except Exception:  # StateUnavailable, or anything else: monitoring must go on
        return True
