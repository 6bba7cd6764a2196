"""The served monitor: one flow run cycles in-process for a period; recoveries never block it.

Why a period and not one flow run per cycle: ``serve()`` (and a process worker) starts a new
Python process for every flow run, and importing Prefect and the project costs ~3 s CPU; at a
10 s interval that was a third of a core to watch ten endpoints (benchmarks/monitor_cpu.py).
One run of the ``monitor`` deployment now runs ``monitor.period_seconds`` of cycles (default
10 minutes) in one process, and the deployment's schedule starts one run per period.

- **Every cycle is visible**: its ``cycle N: probe-targets`` and ``cycle N: apply-thresholds``
  task runs and its report line are in this run's graph and logs.
- **Recoveries are their own flow runs** (subflows of this run), started as asyncio tasks: the
  next cycle does not wait for them (the per-target lock, taken by the decision, makes later
  cycles report ``in_progress`` instead of starting a second one). A Prefect subflow cannot
  outlive its parent, so after its last cycle the run waits for them, at most half a period
  (``Period.drain_seconds``); any still running then are cancelled (audited ``cancelled``,
  lock released) and the next period's cycles start them again.
- **No backlog, ever, and no gap**: cycles sit on one grid across period runs
  (recovery/engine/period.py). The runner starts the next run's process early (prefetch) and
  Prefect holds it until its scheduled time; at its period's end this run checks before each
  slot whether the next run is running, and keeps cycling until it is (bounded), so a slow
  process start leaves no gap and no slot is probed twice. The deployment's concurrency limit
  is 2 (this run handing over or draining + the next cycling) with ``collision_strategy:
  CANCEL_NEW``: a run that cannot start is cancelled, never queued ``AwaitingConcurrencySlot``
  or ``Late``.
- **The status board** is republished when a row changed (and at least every
  ``monitor.board_heartbeat_seconds``), by the cycle that sees the change: current within one
  interval, and no new artifact version for a healthy fleet's every cycle.
- **The run's final state tells the outcome**: its message summarises the period ("60 cycles;
  2 recoveries: 1 succeeded, 1 refused"); a failed recovery makes the run ``Failed``.

``recovery monitor`` (the CLI) still runs ``flows.monitor.monitor``, one flow run per cycle
in one process; the cycle's steps are the same functions.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_client, get_run_logger
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import State, StateType
from prefect.context import FlowRunContext
from prefect.runtime import deployment as current_deployment
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Completed, Failed

from flows.monitor import _log_report, board_and_signals, detect, run_recovery
from flows.reconcile import reconcile_runs
from recovery.blocking import blocking
from recovery.config.loader import RecoveryConfig, load_config
from recovery.engine.monitor import Decision
from recovery.engine.period import Period, claim_slot, summarize
from recovery.enums import MonitorAction
from recovery.redact import install_log_redaction, redact
from recovery.reporting.board import BoardGate
from recovery.services import services_for

CANCEL_GRACE_SECONDS = 30.0  # cancelled recoveries finish their audit rows and release locks

Recoveries = dict["asyncio.Task[dict[str, Any]]", Decision]


async def _cycle(
    config: RecoveryConfig, label: str, gate: BoardGate, recoveries: Recoveries, logger: Any
) -> None:
    """One cycle: probe, decide, start recoveries (not awaited), board, gauges, reconcile."""
    reconciling = asyncio.ensure_future(reconcile_runs(config))
    try:
        decisions, seconds = await detect(config, label)
        _log_report(logger, decisions, seconds)
        for d in decisions:
            if d.action is MonitorAction.RECOVER:
                # A task copies this flow run's context: the recovery is this run's subflow.
                recoveries[asyncio.ensure_future(run_recovery(config, d, logger))] = d
        await board_and_signals(config, decisions, logger, gate)
        for dead in await reconciling:  # never raises (flows/reconcile.py)
            logger.warning("%s of %s (run %s): %s", dead.workflow, dead.target, dead.run_id, dead.message)
    finally:
        reconciling.cancel()


def _outcome(task: asyncio.Task[dict[str, Any]], d: Decision) -> dict[str, Any]:
    if task.cancelled():
        return {"target": d.target, "workflow": d.workflow, "state": "cancelled", "message": "monitor ended"}
    error = task.exception()
    if error is not None:
        why = redact(str(error)) or type(error).__name__
        return {"target": d.target, "workflow": d.workflow, "state": "failed", "message": why}
    return task.result()


async def _other_run_cycling(anchor: float, timeout: float, later: bool = True) -> bool:
    """Is another run of this run's deployment running: a later one (``later``: cycling on the
    same grid, we may hand over) or an earlier one (still cycling our first slot)?

    One API read. Unknown (no deployment, API slow or down) counts as no: a second probe of one
    slot costs less than a gap in monitoring."""
    deployment_id = current_deployment.id
    if not deployment_id:
        return False
    when = datetime.fromtimestamp(anchor + (1.0 if later else -1.0), UTC)  # not this run
    flt = FlowRunFilter(
        deployment_id=FlowRunFilterDeploymentId(any_=[uuid.UUID(str(deployment_id))]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])),
        expected_start_time=FlowRunFilterExpectedStartTime(
            **({"after_": when} if later else {"before_": when})
        ),
    )
    try:
        async with get_client() as client:
            runs = await asyncio.wait_for(client.read_flow_runs(flow_run_filter=flt, limit=1), timeout)
    except Exception:
        return False
    return bool(runs)


async def _claim(config: RecoveryConfig, slot: float, period: Period) -> bool:
    """``claim_slot`` off the event loop; without a deployment (a run started in-process)
    there is no other run to share the grid with."""
    deployment_id = current_deployment.id
    if not deployment_id:
        return True
    state = services_for(config).state
    return await blocking(claim_slot, state, str(deployment_id), slot, str(current_flow_run.id), period)


async def _successor_cycling(anchor: float, timeout: float) -> bool:
    """Is a later run of this run's deployment already running (cycling on the same grid)?"""
    return await _other_run_cycling(anchor, timeout, later=True)


async def _drain(recoveries: Recoveries, seconds: float, logger: Any) -> None:
    """Wait up to ``seconds`` for the recoveries in flight; cancel the rest (bounded)."""
    pending = {t for t in recoveries if not t.done()}
    if pending:
        logger.info("waiting up to %.0fs for %d recoveries in flight", seconds, len(pending))
        _, pending = await asyncio.wait(pending, timeout=seconds)
    if pending:
        logger.warning("%d recoveries still running: cancelled (the next period restarts them)", len(pending))
        for t in pending:
            t.cancel("monitor period ended")
        await asyncio.wait(pending, timeout=CANCEL_GRACE_SECONDS)


@flow(name="monitor-period", log_prints=False)
async def monitor_period() -> State[Any]:
    """Monitor cycles every monitor.interval_seconds for one period (monitor.period_seconds);
    recoveries run as their own flow runs while later cycles go on."""
    install_log_redaction()
    logger = get_run_logger()
    # The worker's config (RECOVERY_CONFIG); a target with an unset ${VAR} fails the run
    # rather than going unmonitored in silence.
    config = load_config().require_resolved()
    m = config.monitor
    started = time.time()  # once: the first slot below must be this very anchor
    anchor = current_flow_run.scheduled_start_time.timestamp()
    ctx = FlowRunContext.get()
    if not (ctx and ctx.flow_run and ctx.flow_run.auto_scheduled):
        # Started by a person or an API call, not the schedule: they asked for monitoring now,
        # so the grid starts at this run's real start (a late start would otherwise wait for the
        # next slot, a whole interval away).
        anchor = max(anchor, started)
    period = Period(anchor, m.interval_seconds, m.period_budget_seconds)
    gate = BoardGate(m.board_heartbeat_seconds)
    recoveries: Recoveries = {}
    cycles = 0
    slot = period.first_slot(started)
    # ``when`` to cycle, and ``key``: the grid slot that cycle covers (None: off the grid).
    when, key = slot, slot
    # Started late: the grid's next slot may be an interval away (past the period, when the
    # two are equal). A run started after its anchor came late for the slot before that: it
    # cycles it at once unless the previous period's run did (the slot's claim says which). A
    # run started early with no run cycling (the first run after `serve`) cycles at once too.
    late = (slot is None or slot > started + 1.0) and started < period.end
    if late and started > anchor:
        missed = period.grid_slot(started) - m.interval_seconds
        if await _claim(config, missed, period):
            when, key = started, None  # claimed: cycled at once, off the grid
    elif late and not await _other_run_cycling(anchor, m.interval_seconds / 2, later=False):
        when, key = started, None
    try:
        while when is not None:
            await asyncio.sleep(max(when - time.time(), 0.0))
            if (
                key is not None
                and key >= period.end - 1e-6
                and await _successor_cycling(anchor, m.interval_seconds / 2)
            ):
                logger.info("the next period's run is cycling: handed over after %d cycles", cycles)
                break
            began = time.time()
            if key is None or await _claim(config, key, period):  # else the other run cycled it
                cycles += 1
                try:
                    await _cycle(config, f"cycle {cycles}", gate, recoveries, logger)
                except Exception as exc:  # one bad cycle must not end the period's monitoring
                    logger.error("cycle %d failed: %s", cycles, redact(str(exc)))
            # After a cycle started off the grid (a late first run cycles at once), the grid's
            # next slot can be moments away: skip one closer than half an interval, or a target
            # is probed twice in a second and one failure counts twice toward the threshold.
            when = key = period.next_slot(max(time.time(), began + m.interval_seconds / 2), handing_over=True)
        await _drain(recoveries, period.drain_seconds, logger)
    finally:
        # Cancelled (or crashed) mid-period: the recoveries in flight end audited, locks released.
        running = {t for t in recoveries if not t.done()}
        for t in running:
            t.cancel("monitor run stopped")
        if running:
            await asyncio.wait(running, timeout=CANCEL_GRACE_SECONDS)
    outcomes = [_outcome(t, d) for t, d in recoveries.items()]
    message = summarize(cycles, outcomes)
    report = {"cycles": cycles, "recoveries": outcomes}
    logger.info(message)
    if any(o["state"] == "failed" for o in outcomes):
        return Failed(message=message, data=report)
    return Completed(message=message, data=report)
