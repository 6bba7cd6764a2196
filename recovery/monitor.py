"""Monitor decisions: turn a batch of probe results into counters and recovery decisions.

A target is recovered when its consecutive failures reach ``failure_threshold`` *and* this
monitor wins the target's lock. The lock is taken here, before any subflow starts, so two
monitors started at the same moment run one recovery between them and the loser does nothing
(no refused audit row for a race that is normal operation).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from recovery.breakers import breaker_for, open_breaker
from recovery.config import RecoveryConfig
from recovery.errors import StateUnavailable
from recovery.probes import ProbeResult
from recovery.state import HealthCounters, SharedState
from recovery.workflows import select_workflow


@dataclass(frozen=True)
class Decision:
    target: str
    healthy: bool
    reason: str
    failures: int
    successes: int
    action: str  # "none" | "recover" | "in-progress" | "below-threshold"
    workflow: str | None = None
    lock_token: str | None = None
    first_failure_at: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "healthy": self.healthy,
            "reason": self.reason,
            "failures": self.failures,
            "successes": self.successes,
            "action": self.action,
            "workflow": self.workflow,
        }


def decide(
    config: RecoveryConfig, state: SharedState, results: list[ProbeResult], now: float | None = None
) -> list[Decision]:
    """Record every probe in shared state and decide which targets to recover now."""
    now = time.time() if now is None else now
    state_url = config.state_url.get_secret_value() if config.state_url else None
    decisions: list[Decision] = []
    for result in results:
        counters: HealthCounters = state.record_probe(result.target, result.healthy, result.reason, now)
        base = Decision(
            target=result.target,
            healthy=result.healthy,
            reason=result.reason,
            failures=counters.failures,
            successes=counters.successes,
            action="none",
            first_failure_at=counters.first_failure_at,
        )
        if result.healthy:
            decisions.append(base)
            continue
        if counters.failures < config.monitor.failure_threshold:
            decisions.append(replace(base, action="below-threshold"))
            continue
        target = config.target(result.target)
        token = str(uuid.uuid4())
        if not state.acquire_lock(target.name, token, config.monitor.lock_ttl_seconds):
            decisions.append(replace(base, action="in-progress"))
            continue
        # The target is confirmed down: tell the application (paused flag, open breaker) so it
        # degrades or fails fast instead of piling requests onto a failing dependency.
        state.set_paused(target.name, f"monitor: {result.reason}")
        # The breaker is advisory here; the recovery's reset step reports Redis trouble.
        with contextlib.suppress(StateUnavailable):
            open_breaker(breaker_for(target.name, target.breaker, state_url))
        workflow = select_workflow(target, result).name
        decisions.append(replace(base, action="recover", workflow=workflow, lock_token=token))
    return decisions
