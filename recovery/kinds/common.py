"""Steps every kind's workflows share: diagnose, reset the breaker, verify, resume.

They see the target only through ``StepContext`` (``ctx.probe()`` uses the kind's own prober),
so one implementation serves HTTP, database and cache targets alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from recovery.blocking import blocking
from recovery.client.breakers import FleetBreaker, breaker_state
from recovery.errors import ProbeFailed
from recovery.kinds.base import Detail, ProbeResult, StepContext, StepSpec, WorkflowSpec
from recovery.testing import delay


async def check_service_health(ctx: StepContext) -> Detail:
    """Diagnosis only: records what the target looks like now; never fails the run."""
    result = await ctx.probe()
    return {"healthy": result.healthy, "reason": result.reason, "latency_ms": round(result.latency_ms, 1)}


def _close_unverified(breaker: FleetBreaker, owner: str, lease_seconds: float) -> Detail:
    before = breaker_state(breaker)
    breaker.close_unverified(owner, lease_seconds)
    return {"before": before, "after": breaker_state(breaker)}


async def reset_circuit_breaker(ctx: StepContext) -> Detail:
    """Close the breaker *unverified*: a lease of the lock's TTL that the run extends with its
    lock and confirms when it succeeds. If the run dies first, the breaker re-opens by itself."""
    # Breaker transitions are synchronous Redis calls: off the event loop (recovery.blocking).
    return await blocking(_close_unverified, ctx.breaker(), ctx.run_id, ctx.config.monitor.lock_ttl_seconds)


async def test_connectivity(ctx: StepContext) -> Detail:
    """``verify.consecutive_successes`` good probes in a row, else ``ProbeFailed`` (retried)."""
    verify = ctx.target.verify
    needed = verify.consecutive_successes
    latencies: list[float] = []
    for i in range(needed):
        result = await ctx.probe()
        if not result.healthy:
            raise ProbeFailed(f"verification probe {i + 1}/{needed} failed: {result.reason}")
        latencies.append(round(result.latency_ms, 1))
        if i + 1 < needed:
            await asyncio.sleep(delay(verify.interval_seconds))  # 0 s in testing mode
    return {"probes": needed, "latency_ms": latencies}


async def restore_operations(ctx: StepContext) -> Detail:
    """Clear the paused flag so the application sends traffic to the target again."""
    was_paused = await blocking(ctx.state.clear_paused, ctx.target.name)
    return {"was_paused": was_paused}


# The shared steps as specs, so every workflow lists them with the same wording.
CHECK_HEALTH = StepSpec(
    "check_service_health", "Probe once and record the diagnosis.", check_service_health, retryable=False
)
RESET_BREAKER = StepSpec(
    "reset_circuit_breaker", "Close the target's circuit breaker.", reset_circuit_breaker
)
VERIFY = StepSpec("test_connectivity", "N consecutive good probes; retried with backoff.", test_connectivity)
RESTORE = StepSpec("restore_operations", "Clear the target's paused flag.", restore_operations)


def recovery_workflow(
    name: str,
    kind: str,
    description: str,
    *repairs: StepSpec,
    diagnose: StepSpec = CHECK_HEALTH,
    when: Callable[[ProbeResult], bool] | None = None,
) -> WorkflowSpec:
    """An automatic recovery: diagnose, the kind's ``repairs``, then reset breaker, verify, resume."""
    return WorkflowSpec(
        name=name,
        kinds=(kind,),
        description=description,
        steps=(diagnose, *repairs, RESET_BREAKER, VERIFY, RESTORE),
        when=when,
    )


def manual_workflow(name: str, kind: str, description: str, *steps: StepSpec) -> WorkflowSpec:
    """A manual operation on one kind: run on request, never chosen by ``select_workflow``."""
    return WorkflowSpec(name=name, kinds=(kind,), manual=True, description=description, steps=steps)
