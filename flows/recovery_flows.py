"""Recovery flows, one per workflow; each is a thin wrapper over ``execute_workflow``.

``RECOVERY_FLOWS``: the automatic-recovery flows the monitor starts as subflows, in its own
process. They take internal parameters (run type, the monitor's lock token, what it detected)
and are deliberately not deployments: no caller can pass a lock token or call a run automatic.
``OPERATION_FLOWS``: ``clear-cache`` and ``reconnect-database``, admin deployments whose
parameters are the caller-facing types of ``flows.admin`` only.
"""

from __future__ import annotations

from typing import Any

from prefect import Flow, flow
from prefect.client.schemas.objects import State

from flows.admin import RequestedBy, TargetName, Text, run_operation
from flows.common import RunType, execute_workflow, on_cancelled, on_crashed
from recovery.config.loader import load_config
from recovery.config.workflows import on_workflow_names
from recovery.engine.runtime import RecoveryRequest


def _workflow_flow(workflow: str, doc: str) -> Flow[..., Any]:
    """An automatic-recovery flow for ``workflow``: the monitor starts these as subflows.

    All share one signature (what the monitor passes); a factory keeps them from drifting apart.
    """

    async def run(
        target: str,
        run_type: RunType = "manual",
        requested_by: str | None = None,
        reason: str | None = None,
        lock_token: str | None = None,
        detected_reason: str | None = None,
        first_failure_at: float | None = None,
        detected_at: float | None = None,
    ) -> dict[str, Any] | State[Any]:
        # The parameters are RecoveryRequest's fields by name; locals() keeps them from drifting
        # (it also lists the closure's ``workflow``).
        fields = {k: v for k, v in locals().items() if k != "workflow"}
        return await execute_workflow(workflow, RecoveryRequest(**fields), load_config())

    run.__name__ = run.__qualname__ = workflow.replace("-", "_")
    run.__doc__ = doc
    return flow(name=workflow, on_cancellation=[on_cancelled], on_crashed=[on_crashed], log_prints=False)(run)


api_failure_recovery = _workflow_flow(
    "api-failure-recovery",
    "Recover an HTTP dependency: check, clear error cache, reset breaker, verify, resume.",
)
database_recovery = _workflow_flow(
    "database-recovery",
    "Recover a database: clear stuck sessions, reset pools, check integrity, verify, resume.",
)
cache_recovery = _workflow_flow(
    "cache-recovery",
    "Recover a Redis cache: delete corrupted entries, rebuild them, verify, resume.",
)
rate_limit_recovery = _workflow_flow(
    "rate-limit-recovery",
    "Back off a rate-limited HTTP dependency: lower the rate, wait for the reset, verify, resume.",
)


@flow(name="clear-cache", on_cancellation=[on_cancelled], on_crashed=[on_crashed], log_prints=False)
async def clear_cache(
    target: TargetName,
    requested_by: RequestedBy,
    reason: Text | None = None,
    pattern: Text | None = None,
) -> dict[str, Any] | State[Any]:
    """Delete the keys of a cache target that match a pattern (audited manual operation).

    Args:
        target: Cache (redis) target whose keys to delete.
        requested_by: Who asks (audited): a name, a ticket bot. Required.
        reason: Why (audited).
        pattern: Redis SCAN MATCH pattern, e.g. user:*; default: the target's validate.key_pattern.
    """
    options = {"pattern": pattern} if pattern else None
    request = RecoveryRequest(target, "clear-cache", "manual", requested_by, reason, options=options)
    return await run_operation(load_config(), request)


@flow(name="reconnect-database", on_cancellation=[on_cancelled], on_crashed=[on_crashed], log_prints=False)
async def reconnect_database(
    target: TargetName, requested_by: RequestedBy, reason: Text | None = None
) -> dict[str, Any] | State[Any]:
    """Reset a database target's connection pools (pool_generation) and verify (audited).

    Args:
        target: Database target whose connection pools to reset.
        requested_by: Who asks (audited): a name, a ticket bot. Required.
        reason: Why (audited).
    """
    request = RecoveryRequest(target, "reconnect-database", "manual", requested_by, reason)
    return await run_operation(load_config(), request)


# The monitor's subflows, by workflow name (select_workflow never picks a manual-only workflow).
RECOVERY_FLOWS: dict[str, Flow[..., Any]] = {
    "rate-limit-recovery": rate_limit_recovery,
    "api-failure-recovery": api_failure_recovery,
    "database-recovery": database_recovery,
    "cache-recovery": cache_recovery,
}
OPERATION_FLOWS: dict[str, Flow[..., Any]] = {
    "clear-cache": clear_cache,
    "reconnect-database": reconnect_database,
}


def flow_for_workflow(name: str) -> Flow[..., Any]:
    """The automatic-recovery flow of workflow ``name``: a built-in one, or (made once per name)
    the flow of a config-defined workflow (``workflows:``), same signature, same hooks."""
    found = RECOVERY_FLOWS.get(name)
    if found is None:
        found = RECOVERY_FLOWS[name] = _workflow_flow(name, f"Config-defined workflow {name}.")
    return found


def _add_config_flows(names: list[str]) -> None:
    """The workflows of every loaded config get their flow in ``RECOVERY_FLOWS``, where the
    monitor looks a decision's workflow up (configs loaded before this module was imported too)."""
    for name in names:
        flow_for_workflow(name)


on_workflow_names(_add_config_flows)
