"""Circuit-breaker flows (the seed's /circuit-breaker endpoints); the work is in the core.

``circuit-breaker-status`` reads the shared breaker state of one or all targets;
``reset-circuit-breaker`` closes one target's breaker and audits who did it and why.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as current_flow_run
from pydantic import Field

from recovery.blocking import blocking
from recovery.config.loader import load_config
from recovery.engine.breaker_admin import breaker_statuses, reset_breaker
from recovery.redact import install_log_redaction


@flow(name="circuit-breaker-status", log_prints=False)
async def circuit_breaker_status(
    target: Annotated[str | None, Field(description="One target; default: all.")] = None,
    config_path: str | None = None,
) -> list[dict[str, Any]]:
    """State, failure count, opened_at and time to half-open of each target's breaker."""
    install_log_redaction()
    logger = get_run_logger()
    statuses = await blocking(breaker_statuses, load_config(config_path), target)
    for s in statuses:
        extra = f", half-open in {s.half_open_in_seconds:g}s" if s.half_open_in_seconds is not None else ""
        logger.info("%s: %s (failures %d/%d%s)", s.target, s.state, s.fail_counter, s.fail_max, extra)
    return [s.as_json() for s in statuses]


@flow(name="reset-circuit-breaker", log_prints=False)
async def reset_circuit_breaker(
    target: Annotated[str, Field(min_length=1, max_length=63, description="Target whose breaker to close.")],
    requested_by: Annotated[str, Field(min_length=1, max_length=128, description="Who asks (audited).")],
    reason: Annotated[str, Field(min_length=1, max_length=2000, description="Why (audited).")],
    config_path: str | None = None,
) -> dict[str, Any]:
    """Close ``target``'s circuit breaker now; audited as a ``reset-circuit-breaker`` run."""
    install_log_redaction()
    logger = get_run_logger()
    flow_run_id = str(current_flow_run.id)
    result = await blocking(
        reset_breaker,
        load_config(config_path),
        target,
        requested_by=requested_by,
        reason=reason,
        run_id=flow_run_id,
        flow_run_id=flow_run_id,
    )
    logger.info("breaker of %s: %s -> %s (by %s)", target, result["before"], result["after"], requested_by)
    return result
