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

from recovery.backends.rate import rate_store_for
from recovery.backends.state import HealthCounters, SharedState
from recovery.client.breakers import open_breaker
from recovery.config.loader import RecoveryConfig
from recovery.engine.workflows import select_workflow
from recovery.enums import MonitorAction
from recovery.errors import StateUnavailable
from recovery.jsonable import to_json
from recovery.kinds.base import ProbeResult
from recovery.policy.flapping import FlapStatus, evaluate
from recovery.services import services_for


@dataclass(frozen=True)
class Decision:
    target: str
    healthy: bool
    reason: str
    failures: int
    successes: int
    action: MonitorAction
    workflow: str | None = None
    lock_token: str | None = None
    first_failure_at: float | None = None
    flapping: bool = False  # recovery/flapping.py: automatic recovery is held off while set
    flap_percent: float = 0.0
    flap_started: bool = False  # this probe made the target flapping (escalate)
    resumed: bool = False  # healthy again with no recovery running: the monitor cleared "paused"

    def as_json(self) -> dict[str, Any]:
        return to_json(self, exclude=("lock_token", "first_failure_at", "flap_started"))


def _flap_status(
    config: RecoveryConfig, state: SharedState, result: ProbeResult, now: float
) -> FlapStatus | None:
    """Push the probe into the target's history and apply the flap thresholds (None: disabled)."""
    if not config.monitor.flap_detection:
        return None
    try:
        history = state.push_probe_history(result.target, result.healthy)
        was = state.flapping_since(result.target) is not None
    except NotImplementedError:  # a SharedState without probe history: no flap detection
        return None
    status = evaluate(history, was, config.monitor.flap_low_threshold, config.monitor.flap_high_threshold)
    if status.changed:
        state.set_flapping(result.target, now if status.flapping else None)
    return status


def decide(
    config: RecoveryConfig, state: SharedState, results: list[ProbeResult], now: float | None = None
) -> list[Decision]:
    """Record every probe in shared state and decide which targets to recover now."""
    now = time.time() if now is None else now
    decisions: list[Decision] = []
    rates = rate_store_for(state)
    healthy: list[str] = []
    for result in results:
        counters: HealthCounters = state.record_probe(result.target, result.healthy, result.reason, now)
        if result.healthy:
            healthy.append(result.target)
        elif result.rate_limited:
            # Keep what the dependency announced (reset time, limit) for rate-limit-recovery.
            ttl = getattr(config.target(result.target), "rate_limit", None)
            rates.note_limited(
                result.target,
                now,
                result.retry_after_seconds,
                result.rate_limit_per_second,
                ttl.ttl_seconds if ttl is not None else 86400.0,
            )
        flap = _flap_status(config, state, result, now)
        base = Decision(
            target=result.target,
            healthy=result.healthy,
            reason=result.reason,
            failures=counters.failures,
            successes=counters.successes,
            action=MonitorAction.NONE,
            first_failure_at=counters.first_failure_at,
            flapping=flap.flapping if flap else False,
            flap_percent=flap.percent if flap else 0.0,
            flap_started=flap.started if flap else False,
        )
        if result.healthy:
            # A paused flag whose recovery died (or never resumed) must not outlive the outage:
            # success_threshold good probes in a row and no lock held clear it (invariant I3).
            resumed = counters.successes >= config.monitor.success_threshold and state.resume_if_idle(
                result.target
            )
            decisions.append(replace(base, resumed=resumed))
            continue
        if counters.failures < config.monitor.failure_threshold:
            decisions.append(replace(base, action=MonitorAction.BELOW_THRESHOLD))
            continue
        if base.flapping:
            # Recovering a flapping target again and again hides the real fault: hold off and
            # let the flow escalate (target.flapping event) so a person looks.
            decisions.append(replace(base, action=MonitorAction.FLAPPING))
            continue
        target = config.target(result.target)
        token = str(uuid.uuid4())
        if not state.acquire_lock(target.name, token, config.monitor.lock_ttl_seconds):
            decisions.append(replace(base, action=MonitorAction.IN_PROGRESS))
            continue
        # The target is confirmed down: tell the application (paused flag, open breaker) so it
        # degrades or fails fast instead of piling requests onto a failing dependency.
        state.set_paused(target.name, f"monitor: {result.reason}")
        # The breaker is advisory here; the recovery's reset step reports Redis trouble.
        with contextlib.suppress(StateUnavailable):
            open_breaker(services_for(config).breaker(target))
        workflow = select_workflow(target, result).name
        decisions.append(replace(base, action=MonitorAction.RECOVER, workflow=workflow, lock_token=token))
    # AIMD: each healthy cycle raises a lowered request rate by one step (one round trip for all).
    rates.raise_rates(healthy, now)
    return decisions


def release_recovery_lock(config: RecoveryConfig, decision: Decision) -> bool:
    """The recovery subflow started for ``decision`` has ended (invariant I4): drop the lock the
    monitor took for it if it is still held under the decision's token; True if it was.

    A run that began released it in ``finish()``; this catches a subflow that never started or
    whose ``begin()`` failed, which would otherwise block the target for the lock's whole TTL
    (and keep its row unreconciled). The token is this decision's alone, so no other run's lock
    can be released; once the subflow ended nothing else uses it. Never raises."""
    if decision.lock_token is None:
        return False
    try:
        return services_for(config).state.release_lock(decision.target, decision.lock_token)
    except StateUnavailable:  # the cycle goes on; the lock's TTL is the backstop
        return False
