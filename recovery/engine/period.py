"""The served monitor's period: when its cycles run, how long it drains, how it reports.

One flow run of the ``monitor`` deployment runs cycles for ``monitor.period_seconds`` (see
flows/monitor_period.py). Its cycles sit on a grid anchored at the run's *scheduled* start:
``anchor + k * interval`` for every k with a slot before ``anchor + period``. The next period's
run is scheduled at exactly ``anchor + period``, so consecutive period runs continue one grid:
no gap (the runner starts a run up to its prefetch before its time; it waits for its anchor)
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

OUTCOMES = ("succeeded", "refused", "failed", "cancelled")


@dataclass(frozen=True)
class Period:
    anchor: float  # epoch seconds: the run's scheduled start
    interval: float
    length: float

    @property
    def end(self) -> float:
        return self.anchor + self.length

    def first_slot(self, now: float) -> float | None:
        """When the run's first cycle runs: its anchor, or at once if it started late (no
        runner picked it up in time: waiting for the next slot would widen the gap)."""
        if now <= self.anchor:
            return self.anchor
        return now if now < self.end else None

    def next_slot(self, now: float) -> float | None:
        """The first slot at or after ``now`` (epoch seconds); None once the period is over."""
        if now <= self.anchor:
            return self.anchor
        k = math.ceil((now - self.anchor) / self.interval - 1e-9)
        slot = self.anchor + k * self.interval
        return slot if slot < self.end - 1e-9 else None

    @property
    def drain_seconds(self) -> float:
        """How long the run waits for its recoveries after its last cycle: half a period, so
        at most two period runs are ever alive (the deployment's concurrency limit is 2, and a
        third would be cancelled, not queued). Recoveries still running then are cancelled
        (audited ``cancelled``, lock released); the next period's cycles start them again."""
        return self.length / 2


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
