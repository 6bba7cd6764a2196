"""Manual operations as flows: ``recover`` is the seed's ``/trigger`` endpoint.

People trigger it from the Prefect UI or the CLI, other systems through the Prefect REST API
(``POST /api/deployments/{id}/create_flow_run``). The recovery runs inside this flow run (no
subflow): one flow run per trigger, whose tasks are the workflow's steps.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State

from flows.admin import (
    CallerType,
    RequestedBy,
    RequestId,
    TargetName,
    Text,
    WorkflowName,
    run_operation,
    trigger_type,
)
from flows.common import on_cancelled, on_crashed
from recovery.blocking import blocking
from recovery.config.loader import load_config
from recovery.engine.runtime import RecoveryRequest, record_dry_run
from recovery.engine.triggers import validate_request
from recovery.engine.workflows import describe_plan, workflow_named
from recovery.redact import install_log_redaction


@flow(name="recover", on_cancellation=[on_cancelled], on_crashed=[on_crashed])
async def recover(
    target: TargetName,
    requested_by: RequestedBy,
    type: CallerType = "manual",
    reason: Text | None = None,
    workflow: WorkflowName | None = None,
    dry_run: bool = False,
    request_id: RequestId | None = None,
) -> dict[str, Any] | State[Any]:
    """Recover a target now (manual or emergency trigger), audited.

    Args:
        target: Target to recover.
        requested_by: Who asks (audited): a name, a ticket bot. Required.
        type: manual, or emergency (needs a reason; bypasses time-window budgets and breaker
            alignment, and takes over a running automatic recovery of the target: it is
            cancelled, both audited). A manual run is refused while another recovery runs.
        reason: Why (audited). Required for an emergency.
        workflow: Workflow to run instead of the one chosen for the target's kind.
        dry_run: Record and return the plan; touch nothing.
        request_id: Your id for this request (letters, digits, - and _, at most 36); the audit
            row gets it, so you can find it. Reusing one another run used is refused.
    """
    install_log_redaction()
    logger = get_run_logger()
    config = load_config()
    # Fields in order: target, workflow, run_type, requested_by, reason.
    request = RecoveryRequest(target, workflow, trigger_type(type), requested_by, reason, dry_run=dry_run)
    if dry_run:
        workflow_name = validate_request(config, request)
        run_id = await blocking(record_dry_run, config, request)
        chosen = config.target(target)
        plan = describe_plan(config, chosen, workflow_named(workflow_name, chosen, config), reason)
        logger.info("dry run of %s:\n%s", target, "\n".join(plan))
        return {
            "run_id": run_id,
            "target": target,
            "workflow": workflow_name,
            "state": "dry_run",
            "plan": plan,
        }
    return await run_operation(config, request, request_id)
