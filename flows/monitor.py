"""The monitor flow: probe everything, apply thresholds, run recoveries as subflows."""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow, get_run_logger

from flows import signals
from flows.common import is_refused
from flows.reconcile import reconcile_runs
from flows.recovery_flows import RECOVERY_FLOWS
from recovery.config.loader import load_config
from recovery.engine.monitor import release_recovery_lock
from recovery.enums import MonitorAction
from recovery.redact import install_log_redaction, redact
from recovery.reporting.status import TargetStatus
from tasks.probe import apply_thresholds, probe_all
from tasks.status import publish_status


@flow(name="monitor", log_prints=False)
async def monitor() -> dict[str, Any]:
    """One monitor cycle. Recoveries of different targets run concurrently."""
    install_log_redaction()
    logger = get_run_logger()
    # The worker's config (RECOVERY_CONFIG); a target with an unset ${VAR} fails the cycle
    # rather than going unmonitored in silence.
    config = load_config().require_resolved()
    for dead in await reconcile_runs(config):  # rows of recoveries whose process died (I1, I2)
        logger.warning("%s of %s (run %s): %s", dead.workflow, dead.target, dead.run_id, dead.message)
    results = await probe_all(config)
    decisions = await apply_thresholds(config, results)
    for d in decisions:
        if not d.healthy:
            logger.warning(
                "%s unhealthy (%s), %d consecutive failures -> %s", d.target, d.reason, d.failures, d.action
            )
    to_recover = [d for d in decisions if d.action is MonitorAction.RECOVER]
    # Flow.__call__'s overloads do not type return_state=True; each call yields a State.
    flows: dict[str, Any] = dict(RECOVERY_FLOWS)
    states = await asyncio.gather(
        *(
            flows[d.workflow or ""](
                target=d.target,
                run_type="automatic",
                requested_by="monitor",
                lock_token=d.lock_token,
                detected_reason=d.reason,
                first_failure_at=d.first_failure_at,
                return_state=True,
            )
            for d in to_recover
        ),
        return_exceptions=True,  # a subflow that could not even start must not hide the others
    )
    recoveries = []
    for d, state in zip(to_recover, states, strict=True):
        if release_recovery_lock(config, d):  # I4: never began (or died) holding the monitor's lock
            logger.warning("%s: released the lock its recovery never took over", d.target)
        if isinstance(state, BaseException):
            why = f"not started: {redact(str(state))}"
            recoveries.append({"target": d.target, "workflow": d.workflow, "state": "failed", "message": why})
            continue
        ok = state.is_completed()
        recoveries.append(
            {
                "target": d.target,
                "workflow": d.workflow,
                # refused: the target's strategy said no (time window, open breaker...): audited
                "state": "succeeded" if ok else ("refused" if is_refused(state) else "failed"),
                "message": state.message,
            }
        )
    # Status board (recovery-status artifact), gauges, flapping escalations: after the
    # recoveries, so the board shows their outcome. A board failure must not fail the cycle.
    board: list[TargetStatus] = []
    try:
        board = await publish_status(config)
    except Exception as exc:
        logger.warning("status board not updated: %s", redact(str(exc)))
    for target in signals.monitor_cycle(decisions, board):
        logger.error("%s is flapping: escalated (target.flapping), no automatic recovery meanwhile", target)
    return {
        "targets": [d.as_json() for d in decisions],
        "recoveries": recoveries,
    }
