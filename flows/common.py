"""Shared flow plumbing: run a workflow spec step by step, and finalise on cancel/crash."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any, Literal

from prefect import Flow, get_run_logger
from prefect.client.schemas.objects import FlowRun, State
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Cancelled, Failed

from flows import signals
from flows.orchestration import install_orchestrator
from flows.takeover import ExpectedFailures, cancel_taken_over
from recovery.blocking import blocking_to_end
from recovery.config.loader import RecoveryConfig, load_config
from recovery.engine.lifecycle import Phase, RunDetails, add_hook, emit
from recovery.engine.reconcile import Crashed
from recovery.engine.runtime import RecoveryRequest, RecoveryRuntime
from recovery.engine.triggers import attempt_id
from recovery.enums import RunState
from recovery.enums import RunType as RunType_
from recovery.errors import LockLost, RecoveryError, RecoveryRefused
from recovery.redact import install_log_redaction, redact
from recovery.services import services_for
from tasks.status import publish_status
from tasks.steps import step_task

_log = logging.getLogger("recovery.flows")

RunType = Literal["automatic", "manual", "scheduled", "emergency"]
REFUSED_STATE = "Refused"  # the name of a refused run's final (Failed-type) state


def log_hook(details: RunDetails) -> None:
    """The run's own log lines: what started, how it ended (refusals are not tracebacks)."""
    try:
        logger: Any = get_run_logger()
    except Exception:  # outside a run context (a crash hook): nothing to log to
        return
    what = f"{details.workflow} of {details.target}"
    if details.phase is Phase.STARTED:
        logger.info("%s started (%s)", what, details.run_type)
    elif details.state is RunState.REFUSED:
        if details.escalate:  # time-window budget spent, same error repeating: a person must look
            logger.error("recovery refused, escalating: %s", details.reason)
        else:
            logger.warning("recovery refused: %s", details.reason)
    elif details.state is RunState.FAILED:
        logger.error("%s failed: %s", what, details.error_text)
    elif details.state is RunState.SUCCEEDED:
        logger.info("%s succeeded", what)
    elif details.state is RunState.CANCELLED and details.reason:  # taken over by an emergency
        logger.warning("%s stopped: %s", what, details.reason)


async def board_hook(details: RunDetails) -> None:
    """A manual run's outcome shows on the status board at once (the monitor's cycle publishes
    the board after its own recoveries, so automatic runs are skipped here)."""
    if details.phase is not Phase.FINISHED or details.run_type is RunType_.AUTOMATIC:
        return
    await publish_status(load_config())


def install_hooks() -> None:
    install_log_redaction()
    install_orchestrator()  # deployment and approval steps (recovery.kinds.orchestrator)
    ExpectedFailures.install()
    add_hook(log_hook)
    add_hook(board_hook)
    signals.install_hooks()


def refused_state(reason: str) -> State[Any]:
    """A refusal is an outcome, not a crash: a Failed-type state named ``Refused``, no traceback."""
    return Failed(name=REFUSED_STATE, message=f"refused: {reason}")


def is_refused(state: State[Any]) -> bool:
    return state.name == REFUSED_STATE


async def execute_workflow(
    workflow: str, request: RecoveryRequest, config: RecoveryConfig, run_id: str | None = None
) -> dict[str, Any] | State[Any]:
    """Run every step of ``workflow`` as a retrying task; the audit row tracks each one.

    The audit row's id is ``run_id`` when the caller chose one (so it can find the row), else
    this flow run's id. Whatever happens, the run's outcome is emitted once, from the
    ``finally`` below, to the registered run hooks (logs, metrics, events).
    """
    install_hooks()
    logger = get_run_logger()
    flow_run_id = str(current_flow_run.id)
    request = replace(request, workflow=workflow)
    run_type = RunType_(request.run_type)
    audit_id = run_id or attempt_id(flow_run_id, current_flow_run.run_count)  # UI Retry: a new row
    started = time.monotonic()

    def outcome(state: RunState, **extra: Any) -> RunDetails:
        return RunDetails(
            Phase.FINISHED, request.target, workflow, run_type, audit_id, state,
            duration_seconds=None if state is RunState.REFUSED else time.monotonic() - started,
            first_failure_at=request.first_failure_at, **extra,
        )  # fmt: skip

    final: RunDetails | None = None
    try:
        try:
            rt = await RecoveryRuntime.abegin(config, request, run_id=audit_id, flow_run_id=flow_run_id)
        except RecoveryRefused as exc:
            final = outcome(
                RunState.REFUSED, reason=exc.reason, escalate=exc.escalate, rung=exc.rung, rungs=exc.rungs
            )
            return refused_state(exc.reason)
        except BaseException as exc:  # audit or state store down before anything was done
            final = outcome(RunState.FAILED, error=exc)
            raise
        state: RunState = RunState.FAILED
        error: BaseException | None = None
        refusal: RecoveryRefused | None = None
        taken_over: str | None = None
        try:
            # Inside the try: a cancellation while the start is reported still finishes the run.
            await emit(RunDetails(Phase.STARTED, rt.target.name, workflow, run_type, rt.run_id))
            if rt.took_over is not None:
                await cancel_taken_over(rt.took_over, logger)
            for name, planned in rt.plans.items():
                try:
                    detail = await step_task(planned)(rt, name)
                    logger.info("step %s: %s", name, "skipped" if detail is None else detail)
                except RecoveryRefused:
                    raise  # an approval said no, or nobody answered: never skipped as optional
                except Exception as exc:
                    if isinstance(exc, LockLost) or not planned.step.optional:
                        raise
                    logger.warning("optional step %s failed, continuing: %s", name, redact(str(exc)))
            state = RunState.SUCCEEDED
        except RecoveryRefused as exc:  # ApprovalRefused: the run ends refused, with the reason
            state, error, refusal = RunState.REFUSED, exc, exc
        except asyncio.CancelledError as exc:
            state, error = RunState.CANCELLED, exc
            raise
        except LockLost as exc:
            error = exc
            taken_over = await blocking_to_end(rt.taken_over_by)
            if taken_over is None:
                return Failed(message=redact(str(exc)))
            state = RunState.CANCELLED  # an emergency took over: its run acts now, not this one
            return Cancelled(message=redact(taken_over))
        except RecoveryError as exc:  # an expected failure (verification, a step's own check):
            error = exc  # one line in the state and the log, no traceback (ExpectedFailures)
            return Failed(message=f"{workflow} of {rt.target.name} failed: {redact(str(exc))}")
        except BaseException as exc:
            error = exc
            raise
        finally:
            why = {"reason": refusal.reason} if refusal is not None else {"reason": taken_over}
            extra = {"taken_over": True} if taken_over else {}
            final = outcome(state, error=error, rung=rt.rung, rungs=rt.rungs, extra=extra, **why)
            await rt.afinish(state, error)  # off the loop; completes even while cancelled
        if refusal is not None:
            return refused_state(refusal.reason)
        return {"run_id": rt.run_id, "target": rt.target.name, "workflow": workflow, "state": "succeeded"}
    finally:
        if final is not None:
            await emit(final)


def _audit_id(flow_run: FlowRun) -> str:
    """The audit row's id of a recovery flow run (``execute_workflow``'s ``audit_id``; a
    re-run attempt of the same flow run has its own row, linked by ``flow_run_id``)."""
    params = flow_run.parameters or {}
    return attempt_id(str(flow_run.id), flow_run.run_count, params.get("request_id"))


def _finalize(flow_run: FlowRun, final: RunState, error_type: str) -> None:
    """Mark an audit row that is still ``in_progress`` and release its lock (hooks below)."""
    params = flow_run.parameters or {}
    try:
        services = services_for(load_config())
        record = services.audit.run(_audit_id(flow_run))
        if record is None:
            return
        if record.state == RunState.IN_PROGRESS:
            services.audit.finish_run(record.id, final, f"flow run {final}", error_type=error_type)
        # Also when the row is already finished: a served run is cancelled by a signal, and its
        # process can die between finishing its row and releasing its lock (seen under load in
        # tests/flows/test_rest_api.py). The release is owner-checked: a lock another run holds
        # now (an emergency's takeover) stays.
        owner = params.get("lock_token") or record.id
        services.state.release_lock(record.target, owner)
        services.breaker(record.target).end_probe(owner, None)  # a breaker_aligned probe
    except Exception as exc:  # a hook must never raise; the lock TTL is the backstop
        _log.warning(
            "could not finish flow run %s's audit row or release its lock: %s: %s",
            flow_run.id, type(exc).__name__, redact(str(exc)),
        )  # fmt: skip


async def on_cancelled(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    await blocking_to_end(_finalize, flow_run, RunState.CANCELLED, "FlowCancelled")


async def on_crashed(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """The flow run crashed: finish its row as ``Crashed`` and report the end, once.

    In the crashing process, ``execute_workflow``'s ``finally`` usually reported it already
    (``emit`` drops the repeat); run by a worker after the process died, this is the report
    (its event id matches, so Prefect keeps one ``recovery.failed`` either way)."""
    await blocking_to_end(_finalize, flow_run, RunState.FAILED, "Crashed")
    params = flow_run.parameters or {}
    install_hooks()
    await emit(
        RunDetails(
            Phase.FINISHED,
            target=str(params.get("target", "unknown")),
            workflow=str(params.get("workflow") or flow.name),
            run_type=RunType_(params.get("run_type") or params.get("type") or "manual"),
            run_id=_audit_id(flow_run),
            state=RunState.FAILED,
            error=Crashed(state.message or "flow run crashed"),
            first_failure_at=params.get("first_failure_at"),
        )
    )
