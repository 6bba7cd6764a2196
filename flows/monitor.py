"""The monitor flow: probe everything, apply thresholds, run recoveries as subflows.

One cycle has a budget, ``monitor.cycle_timeout_seconds`` (default ``interval_seconds``), and
this is what it waits for:

1. probes, for the budget minus a reserve for recording them (twice ``state_timeout_seconds``,
   at most half the budget); a probe still running then is cancelled and reported ``timed out``
   (not counted: the monitor stopped waiting, the target did not fail a probe);
2. thresholds (``decide``, on a worker thread) until the budget is spent (at least the
   reserve), plus twice the state timeout for a call in flight; targets not reached, or all of
   them when shared state is unavailable, are reported ``deferred`` with a note saying why;
   The reconcile pass (finishing rows of recoveries whose process died) runs alongside 1-2 and
   is awaited at the end: a slow audit store cannot delay the report.
3. then the per-target report is logged and handed to the caller's ``REPORT_SINK`` (the CLI
   prints it): every target, its probe result and action, by the deadline;
4. recoveries start as subflows and this flow run waits for them: a Prefect subflow cannot
   outlive its parent run (the parent's API client is closed; measured with Prefect 3.9). They
   are not bound by the cycle's deadline: each holds its own lock, refreshed per step, and
   every step's dependency calls are bounded; ``recovery monitor`` starts its next cycle on
   time meanwhile (runners.cmd_monitor);
5. the status board and gauges, after the recoveries (skipped while state is unavailable).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from prefect import flow, get_run_logger

from flows import signals
from flows.common import is_refused
from flows.reconcile import reconcile_runs
from flows.recovery_flows import flow_for_workflow
from recovery.blocking import blocking_to_end
from recovery.config.loader import RecoveryConfig, load_config
from recovery.engine.monitor import STATE_UNAVAILABLE, Decision, release_recovery_lock
from recovery.enums import MonitorAction
from recovery.redact import install_log_redaction, redact
from recovery.reporting.board import BoardGate
from recovery.reporting.status import TargetStatus
from tasks.probe import apply_thresholds, probe_all
from tasks.status import publish_status

Report = dict[str, Any]
# Set by a caller that wants the cycle's report as soon as it exists, before the recoveries end
# (the CLI's monitor loop). A context variable, not a parameter: flow parameters must be JSON.
REPORT_SINK: ContextVar[Callable[[Report], None] | None] = ContextVar("monitor_report_sink", default=None)


def _log_report(logger: Any, decisions: list[Decision], seconds: float) -> None:
    for d in decisions:
        if d.action is MonitorAction.DEFERRED:
            health = "healthy" if d.healthy else f"unhealthy ({d.reason})"
            logger.warning("%s %s -> %s", d.target, health, d.note)
        elif not d.healthy:
            logger.warning(
                "%s unhealthy (%s), %d consecutive failures -> %s", d.target, d.reason, d.failures, d.action
            )
    deferred = sum(d.action is MonitorAction.DEFERRED for d in decisions)
    logger.info("cycle report: %d targets, %d deferred, in %.1fs", len(decisions), deferred, seconds)


async def detect(config: RecoveryConfig, label: str | None = None) -> tuple[list[Decision], float]:
    """Probe and decide within the cycle's budget (steps 1-2 above); returns the seconds taken.

    ``label`` names the cycle's task runs (the served monitor runs many cycles in one flow run)."""
    started = time.monotonic()
    budget = config.monitor.cycle_budget_seconds
    reserve = min(budget / 2, 2 * config.state_timeout_seconds)
    probe, thresholds = probe_all, apply_thresholds
    if label is not None:
        probe = probe.with_options(task_run_name=f"{label}: probe-targets")
        thresholds = thresholds.with_options(task_run_name=f"{label}: apply-thresholds")
    results = await probe(config, budget - reserve)
    # Recording gets what is left, but never less than the reserve: probes cut off at their
    # deadline plus Prefect's overhead must not leave the healthy ones undecided.
    remaining = max(budget - (time.monotonic() - started), reserve)
    decisions = await thresholds(config, results, remaining)
    return decisions, time.monotonic() - started


async def run_recovery(config: RecoveryConfig, d: Decision, logger: Any) -> dict[str, Any]:
    """Run ``d``'s recovery as a subflow of the current flow run; its outcome (never raises but
    for a cancellation). The monitor's lock token and decision time are handed over."""
    state: Any
    try:
        # Flow.__call__'s overloads do not type return_state=True; each call yields a State.
        recovery: Any = flow_for_workflow(d.workflow or "")  # built-in or config-defined
        state = await recovery(
            target=d.target,
            run_type="automatic",
            requested_by="monitor",
            lock_token=d.lock_token,
            detected_reason=d.reason,
            first_failure_at=d.first_failure_at,
            detected_at=d.detected_at,
            return_state=True,
        )
    except Exception as exc:  # a subflow that could not even start must not hide the others
        state = exc
    finally:
        if await blocking_to_end(release_recovery_lock, config, d):  # I4: never began (or died) holding it
            logger.warning("%s: released the lock its recovery never took over", d.target)
    if isinstance(state, BaseException):
        why = f"not started: {redact(str(state))}"
        return {"target": d.target, "workflow": d.workflow, "state": "failed", "message": why}
    # refused: the target's strategy said no (time window, open breaker...): audited.
    # cancelled: by a person, a drain, or an emergency run that took the recovery over.
    outcome = (
        "succeeded"
        if state.is_completed()
        else "refused"
        if is_refused(state)
        else "cancelled"
        if state.is_cancelled()
        else "failed"
    )
    return {"target": d.target, "workflow": d.workflow, "state": outcome, "message": state.message}


async def _recover(config: RecoveryConfig, to_recover: list[Decision], logger: Any) -> list[dict[str, Any]]:
    """Run the recoveries as concurrent subflows; one outcome per decision (step 4 above)."""
    return list(await asyncio.gather(*(run_recovery(config, d, logger) for d in to_recover)))


async def board_and_signals(
    config: RecoveryConfig, decisions: list[Decision], logger: Any, gate: BoardGate | None = None
) -> list[TargetStatus]:
    """Publish the status board (through ``gate``: only on a change or heartbeat), update the
    gauges and escalate flapping targets. A board failure must not fail the cycle."""
    board: list[TargetStatus] = []
    if any(d.note == STATE_UNAVAILABLE for d in decisions):
        logger.warning("status board not updated: shared state unavailable")
    else:
        try:
            board = await publish_status(config, gate)
        except Exception as exc:
            logger.warning("status board not updated: %s", redact(str(exc)))
    for target in signals.monitor_cycle(decisions, board):
        logger.error("%s is flapping: escalated (target.flapping), no automatic recovery meanwhile", target)
    return board


@flow(name="monitor", log_prints=False)
async def monitor() -> Report:
    """One monitor cycle. Recoveries of different targets run concurrently."""
    install_log_redaction()
    logger = get_run_logger()
    # The worker's config (RECOVERY_CONFIG); a target with an unset ${VAR} fails the cycle
    # rather than going unmonitored in silence.
    config = load_config().require_resolved()
    # Rows of recoveries whose process died (I1, I2): alongside the probes, not before them, so
    # a slow audit store or Redis cannot delay the cycle's report (awaited before returning).
    reconciling = asyncio.ensure_future(reconcile_runs(config))
    try:
        decisions, seconds = await detect(config)
        _log_report(logger, decisions, seconds)
        targets = [d.as_json() for d in decisions]
        sink = REPORT_SINK.get()
        if sink is not None:
            try:
                sink({"targets": targets, "report_seconds": round(seconds, 3)})
            except Exception as exc:  # the caller's printing must not cost the recoveries
                logger.warning("cycle report not delivered: %s", redact(str(exc)))
        to_recover = [d for d in decisions if d.action is MonitorAction.RECOVER]
        recoveries = await _recover(config, to_recover, logger)
        # Status board (recovery-status artifact), gauges, flapping escalations: after the
        # recoveries, so the board shows their outcome.
        await board_and_signals(config, decisions, logger)
        for dead in await reconciling:  # never raises (flows/reconcile.py)
            logger.warning("%s of %s (run %s): %s", dead.workflow, dead.target, dead.run_id, dead.message)
    finally:
        reconciling.cancel()  # a no-op once awaited; a cancelled cycle leaves nothing behind
    return {"targets": targets, "recoveries": recoveries, "report_seconds": round(seconds, 3)}
