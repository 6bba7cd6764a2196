"""Recovery flows, one per workflow; each is a thin wrapper over ``execute_workflow``."""

from __future__ import annotations

from typing import Any

from prefect import Flow, flow
from prefect.client.schemas.objects import State

from flows.common import RunType, execute_workflow, on_cancelled, on_crashed
from recovery.config.loader import load_config
from recovery.engine.runtime import RecoveryRequest


def _workflow_flow(workflow: str, doc: str) -> Flow[..., Any]:
    """An automatic-recovery flow for ``workflow``: the monitor starts these as subflows.

    All share one signature (what the monitor passes); a factory keeps them from drifting apart.
    """

    async def run(
        target: str,
        config_path: str | None = None,
        run_type: RunType = "manual",
        requested_by: str | None = None,
        reason: str | None = None,
        lock_token: str | None = None,
        detected_reason: str | None = None,
        first_failure_at: float | None = None,
    ) -> dict[str, Any] | State[Any]:
        request = RecoveryRequest(
            target=target,
            run_type=run_type,
            requested_by=requested_by,
            reason=reason,
            lock_token=lock_token,
            detected_reason=detected_reason,
            first_failure_at=first_failure_at,
        )
        return await execute_workflow(workflow, request, load_config(config_path))

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
    target: str,
    pattern: str | None = None,
    config_path: str | None = None,
    run_type: RunType = "manual",
    requested_by: str | None = None,
    reason: str | None = None,
    lock_token: str | None = None,
    detected_reason: str | None = None,
    first_failure_at: float | None = None,
) -> dict[str, Any] | State[Any]:
    """Manual: delete the keys of a cache target matching ``pattern`` (default: its key_pattern)."""
    request = RecoveryRequest(
        target=target,
        run_type=run_type,
        requested_by=requested_by,
        reason=reason,
        lock_token=lock_token,
        detected_reason=detected_reason,
        first_failure_at=first_failure_at,
        options={"pattern": pattern} if pattern else None,
    )
    return await execute_workflow("clear-cache", request, load_config(config_path))


@flow(name="reconnect-database", on_cancellation=[on_cancelled], on_crashed=[on_crashed], log_prints=False)
async def reconnect_database(
    target: str,
    config_path: str | None = None,
    run_type: RunType = "manual",
    requested_by: str | None = None,
    reason: str | None = None,
    lock_token: str | None = None,
    detected_reason: str | None = None,
    first_failure_at: float | None = None,
) -> dict[str, Any] | State[Any]:
    """Manual: reset the database's connection pools (pool_generation) and verify."""
    request = RecoveryRequest(
        target=target,
        run_type=run_type,
        requested_by=requested_by,
        reason=reason,
        lock_token=lock_token,
        detected_reason=detected_reason,
        first_failure_at=first_failure_at,
    )
    return await execute_workflow("reconnect-database", request, load_config(config_path))


RECOVERY_FLOWS: dict[str, Flow[..., Any]] = {
    "rate-limit-recovery": rate_limit_recovery,
    "api-failure-recovery": api_failure_recovery,
    "database-recovery": database_recovery,
    "cache-recovery": cache_recovery,
    "clear-cache": clear_cache,
    "reconnect-database": reconnect_database,
}
