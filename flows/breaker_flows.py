"""Circuit-breaker flows (the seed's /circuit-breaker endpoints); the work is in the core.

``circuit-breaker-status`` reads the shared breaker state of one or all targets;
``reset-circuit-breaker`` probes the target first (the monitor's prober, bounded) and closes its
breaker only if it is healthy, or if the caller forces it; audited either way (who, why, the
probe, forced or refused).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run as current_flow_run

from flows.admin import RequestedBy, TargetName, Text, gate, refuse_admitted
from recovery.blocking import blocking
from recovery.config.loader import load_config
from recovery.engine.breaker_admin import (
    RESET_PROBE_SECONDS,
    RESET_WORKFLOW,
    breaker_statuses,
    reset_breaker,
    reset_refusal,
)
from recovery.engine.probing import probe_targets
from recovery.engine.runtime import RecoveryRequest
from recovery.engine.triggers import validate_request
from recovery.redact import install_log_redaction


@flow(name="circuit-breaker-status", log_prints=False)
async def circuit_breaker_status(target: TargetName | None = None) -> list[dict[str, Any]]:
    """State, failure count, opened_at and time to half-open of each target's breaker.

    Args:
        target: One target; default: all.
    """
    install_log_redaction()
    logger = get_run_logger()
    statuses = await blocking(breaker_statuses, load_config(), target)
    for s in statuses:
        extra = f", half-open in {s.half_open_in_seconds:g}s" if s.half_open_in_seconds is not None else ""
        logger.info("%s: %s (failures %d/%d%s)", s.target, s.state, s.fail_counter, s.fail_max, extra)
    return [s.as_json() for s in statuses]


@flow(name="reset-circuit-breaker", log_prints=False)
async def reset_circuit_breaker(
    target: TargetName, requested_by: RequestedBy, reason: Text, force: bool = False
) -> dict[str, Any] | State[Any]:
    """Close a target's circuit breaker now, if the target answers; audited as a
    ``reset-circuit-breaker`` run.

    Args:
        target: Target whose breaker to close. It is probed first; if unhealthy the reset is
            refused unless force is set.
        requested_by: Who asks (audited): a name, a ticket bot. Required.
        reason: Why (audited). Required.
        force: Reset even though the target's probe fails (audited as forced, with the probe's
            result).
    """
    install_log_redaction()
    logger = get_run_logger()
    config = load_config()
    request = RecoveryRequest(target, None, "manual", requested_by, reason)
    validate_request(config, request)  # unknown target, blank requested_by: fails before any action
    run_id, refused = await gate(config, request, RESET_WORKFLOW)
    if refused is not None:
        return refused
    [probe] = await probe_targets([config.target(target)], concurrency=1, timeout=RESET_PROBE_SECONDS)
    refusal = reset_refusal(probe)
    if refusal is not None:
        if not force:
            return await refuse_admitted(config, request, RESET_WORKFLOW, run_id, refusal)
        logger.warning(
            "%s is unhealthy (%s): resetting anyway (force, by %s)", target, probe.reason, requested_by
        )
    result = await blocking(
        reset_breaker,
        config,
        target,
        requested_by=requested_by,
        reason=reason,
        run_id=run_id,
        flow_run_id=str(current_flow_run.id),
        probe=probe,
    )
    logger.info("breaker of %s: %s -> %s (by %s)", target, result["before"], result["after"], requested_by)
    return result
