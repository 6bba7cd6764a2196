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


RECOVERY_FLOWS: dict[str, Flow[..., Any]] = {"api-failure-recovery": api_failure_recovery}
