"""Probe tasks: one task probes the whole batch (a task run costs ~9 ms; targets can be 1,000s)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from recovery.config.loader import RecoveryConfig
from recovery.engine.monitor import Decision, decide
from recovery.engine.probing import probe_targets
from recovery.kinds.base import ProbeResult
from recovery.services import services_for


@task(name="probe-targets", cache_policy=NO_CACHE)
async def probe_all(config: RecoveryConfig) -> list[ProbeResult]:
    """Probe every configured target concurrently (bounded by monitor.probe_concurrency)."""
    return await probe_targets(config.targets, config.monitor.probe_concurrency)


@task(name="apply-thresholds", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def apply_thresholds(config: RecoveryConfig, results: list[ProbeResult]) -> list[Decision]:
    """Record probe results in shared state; lock and pick the targets to recover now."""
    return decide(config, services_for(config).state, results)
