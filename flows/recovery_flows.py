"""Recovery flows, one per workflow; each is a thin wrapper over ``execute_workflow``."""

from __future__ import annotations

from typing import Any

from prefect import Flow, flow
from prefect.client.schemas.objects import State

from flows.common import RunType, execute_workflow, on_cancelled, on_crashed
from recovery.config.loader import load_config
from recovery.engine.runtime import RecoveryRequest


async def _run(
    workflow: str, config_path: str | None = None, pattern: str | None = None, **fields: Any
) -> dict[str, Any] | State[Any]:
    """The body every recovery flow shares: its parameters (``locals()``) -> one request.

    The flows' parameters are RecoveryRequest's fields by name, plus the config path and
    clear-cache's ``pattern`` (a workflow option); passing ``locals()`` keeps them from drifting.
    """
    request = RecoveryRequest(**fields, options={"pattern": pattern} if pattern else None)
    return await execute_workflow(workflow, request, load_config(config_path))


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
        # locals() also lists the closure's ``workflow``: the parameters are everything else.
        fields = {k: v for k, v in locals().items() if k != "workflow"}
        return await _run(workflow, **fields)

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
    return await _run("clear-cache", **locals())


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
    return await _run("reconnect-database", **locals())


RECOVERY_FLOWS: dict[str, Flow[..., Any]] = {
    "rate-limit-recovery": rate_limit_recovery,
    "api-failure-recovery": api_failure_recovery,
    "database-recovery": database_recovery,
    "cache-recovery": cache_recovery,
    "clear-cache": clear_cache,
    "reconnect-database": reconnect_database,
}
