"""Shared flow plumbing: run a workflow spec step by step, and finalise on cancel/crash."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from prefect import Flow, get_run_logger
from prefect.client.schemas.objects import FlowRun, State
from prefect.runtime import flow_run as current_flow_run

from flows import signals
from recovery.audit.store import AuditStore
from recovery.backends.state import open_state
from recovery.client.breakers import breaker_for_target
from recovery.config.loader import load_config
from recovery.engine.runtime import RecoveryRequest, RecoveryRuntime
from recovery.errors import RecoveryRefused
from recovery.redact import install_log_redaction, redact
from tasks.steps import step_task

RunType = Literal["automatic", "manual", "scheduled", "emergency"]


def _since(started: float) -> float:
    return time.monotonic() - started


async def execute_workflow(
    workflow: str, request: RecoveryRequest, config_path: str | None, run_id: str | None = None
) -> dict[str, Any]:
    """Run every step of ``workflow`` as a retrying task; the audit row tracks each one.

    The audit row's id is ``run_id`` when the caller chose one (so it can find the row), else
    this flow run's id.
    """
    install_log_redaction()
    logger = get_run_logger()
    config = load_config(config_path)
    flow_run_id = str(current_flow_run.id)
    request = RecoveryRequest(**{**request.__dict__, "workflow": workflow})
    started = time.monotonic()
    try:
        rt = RecoveryRuntime.begin(config, request, run_id=run_id or flow_run_id, flow_run_id=flow_run_id)
    except RecoveryRefused as exc:
        if exc.escalate:  # time-window budget spent, same error repeating: a person must look
            logger.error("recovery refused, escalating: %s", exc.reason)
        else:
            logger.warning("recovery refused: %s", exc.reason)
        signals.run_refused(request.target, workflow, request.run_type, exc.reason, exc.escalate)
        raise
    logger.info("%s of %s started (%s)", workflow, rt.target.name, request.run_type)
    try:
        for name, planned in rt.plans.items():
            try:
                detail = await step_task(planned)(rt, name)
                logger.info("step %s: %s", name, "skipped" if detail is None else detail)
            except Exception as exc:
                if not planned.step.optional:
                    raise
                logger.warning("optional step %s failed, continuing: %s", name, redact(str(exc)))
    except asyncio.CancelledError as exc:
        rt.finish("cancelled", exc)
        signals.run_finished(
            rt.target.name, workflow, request.run_type, "cancelled", _since(started), rt.run_id
        )
        raise
    except BaseException as exc:
        rt.finish("failed", exc)
        logger.error("%s of %s failed: %s", workflow, rt.target.name, redact(str(exc)))
        signals.run_finished(
            rt.target.name, workflow, request.run_type, "failed", _since(started), rt.run_id, exc
        )
        raise
    rt.finish("succeeded")
    signals.run_finished(rt.target.name, workflow, request.run_type, "succeeded", _since(started), rt.run_id)
    logger.info("%s of %s succeeded", workflow, rt.target.name)
    return {"run_id": rt.run_id, "target": rt.target.name, "workflow": workflow, "state": "succeeded"}


def _finalize(flow_run: FlowRun, final: str) -> None:
    """Mark an audit row that is still ``in_progress`` and release its lock (hooks below)."""
    params = flow_run.parameters or {}
    try:
        config = load_config(params.get("config_path"))
        audit = AuditStore(config.audit_url.get_secret_value())
        record = audit.run(params.get("request_id") or str(flow_run.id))
        if record is None or record.state != "in_progress":
            return
        audit.finish_run(record.id, final, f"flow run {final}", error_type=f"Flow{final.title()}")
        state = open_state(config.state_url.get_secret_value() if config.state_url else None)
        owner = params.get("lock_token") or record.id
        state.release_lock(record.target, owner)
        breaker_for_target(config, record.target).end_probe(owner, None)  # a breaker_aligned probe
    except Exception:  # a hook must never raise; the lock TTL is the backstop
        return


def on_cancelled(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    _finalize(flow_run, "cancelled")


def on_crashed(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    _finalize(flow_run, "failed")
    params = flow_run.parameters or {}
    workflow = str(params.get("workflow") or flow.name)
    run_type = str(params.get("run_type") or params.get("type") or "manual")
    target = str(params.get("target", "unknown"))
    signals.run_finished(target, workflow, run_type, "failed", None, str(flow_run.id), state.message)
