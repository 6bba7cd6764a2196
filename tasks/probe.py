"""Probe tasks: one task probes the whole batch (a task run costs ~9 ms; targets can be 1,000s)."""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from recovery.config.loader import RecoveryConfig
from recovery.engine.monitor import Decision, decide_by
from recovery.engine.probing import probe_targets
from recovery.kinds.base import ProbeResult
from recovery.services import services_for


@task(name="probe-targets", cache_policy=NO_CACHE)
async def probe_all(config: RecoveryConfig, timeout_seconds: float | None = None) -> list[ProbeResult]:
    """Probe every configured target concurrently (bounded by monitor.probe_concurrency); probes
    still running after ``timeout_seconds`` are reported ``timed out``."""
    return await probe_targets(config.targets, config.monitor.probe_concurrency, timeout_seconds)


# No task retries: a retry would count the probes already recorded twice and spend the cycle's
# deadline; targets that could not be recorded are reported deferred and the next cycle retries.
@task(name="apply-thresholds", cache_policy=NO_CACHE)
async def apply_thresholds(
    config: RecoveryConfig, results: list[ProbeResult], timeout_seconds: float | None = None
) -> list[Decision]:
    """Record probe results in shared state; lock and pick the targets to recover now.

    Runs ``decide`` on a worker thread (its Redis calls never block the flow's event loop) and
    answers within ``timeout_seconds`` (+ the state timeout for a call in flight).
    """
    budget = config.monitor.cycle_budget_seconds if timeout_seconds is None else timeout_seconds
    return await decide_by(config, services_for(config).state, results, time.monotonic() + budget)
