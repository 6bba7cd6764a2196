"""Recovery flows, one per workflow; each is a thin wrapper over ``execute_workflow``."""

from __future__ import annotations

from typing import Any

from prefect import Flow, flow

from flows.common import RunType, execute_workflow, on_cancelled, on_crashed
from recovery.runtime import RecoveryRequest


@flow(name="api-failure-recovery", on_cancellation=[on_cancelled], on_crashed=[on_crashed], log_prints=False)
async def api_failure_recovery(
    target: str,
    config_path: str | None = None,
    run_type: RunType = "manual",
    requested_by: str | None = None,
    reason: str | None = None,
    lock_token: str | None = None,
    detected_reason: str | None = None,
    first_failure_at: float | None = None,
) -> dict[str, Any]:
    """Recover an HTTP dependency: check, clear error cache, reset breaker, verify, resume."""
    request = RecoveryRequest(
        target=target,
        run_type=run_type,
        requested_by=requested_by,
        reason=reason,
        lock_token=lock_token,
        detected_reason=detected_reason,
        first_failure_at=first_failure_at,
    )
    return await execute_workflow("api-failure-recovery", request, config_path)


@flow(name="database-recovery", on_cancellation=[on_cancelled], on_crashed=[on_crashed], log_prints=False)
async def database_recovery(
    target: str,
    config_path: str | None = None,
    run_type: RunType = "manual",
    requested_by: str | None = None,
    reason: str | None = None,
    lock_token: str | None = None,
    detected_reason: str | None = None,
    first_failure_at: float | None = None,
) -> dict[str, Any]:
    """Recover a database: clear stuck sessions, reset pools, check integrity, verify, resume."""
    request = RecoveryRequest(
        target=target,
        run_type=run_type,
        requested_by=requested_by,
        reason=reason,
        lock_token=lock_token,
        detected_reason=detected_reason,
        first_failure_at=first_failure_at,
    )
    return await execute_workflow("database-recovery", request, config_path)


@flow(name="cache-recovery", on_cancellation=[on_cancelled], on_crashed=[on_crashed], log_prints=False)
async def cache_recovery(
    target: str,
    config_path: str | None = None,
    run_type: RunType = "manual",
    requested_by: str | None = None,
    reason: str | None = None,
    lock_token: str | None = None,
    detected_reason: str | None = None,
    first_failure_at: float | None = None,
) -> dict[str, Any]:
    """Recover a Redis cache: delete corrupted entries, rebuild them, verify, resume."""
    request = RecoveryRequest(
        target=target,
        run_type=run_type,
        requested_by=requested_by,
        reason=reason,
        lock_token=lock_token,
        detected_reason=detected_reason,
        first_failure_at=first_failure_at,
    )
    return await execute_workflow("cache-recovery", request, config_path)


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
) -> dict[str, Any]:
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
    return await execute_workflow("clear-cache", request, config_path)


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
) -> dict[str, Any]:
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
    return await execute_workflow("reconnect-database", request, config_path)


@flow(name="rate-limit-recovery", on_cancellation=[on_cancelled], on_crashed=[on_crashed], log_prints=False)
async def rate_limit_recovery(
    target: str,
    config_path: str | None = None,
    run_type: RunType = "manual",
    requested_by: str | None = None,
    reason: str | None = None,
    lock_token: str | None = None,
    detected_reason: str | None = None,
    first_failure_at: float | None = None,
) -> dict[str, Any]:
    """Back off a rate-limited HTTP dependency: lower the rate, wait for the reset, verify, resume."""
    request = RecoveryRequest(
        target=target,
        run_type=run_type,
        requested_by=requested_by,
        reason=reason,
        lock_token=lock_token,
        detected_reason=detected_reason,
        first_failure_at=first_failure_at,
    )
    return await execute_workflow("rate-limit-recovery", request, config_path)


RECOVERY_FLOWS: dict[str, Flow[..., Any]] = {
    "rate-limit-recovery": rate_limit_recovery,
    "api-failure-recovery": api_failure_recovery,
    "database-recovery": database_recovery,
    "cache-recovery": cache_recovery,
    "clear-cache": clear_cache,
    "reconnect-database": reconnect_database,
}
