"""Manual operations as flows: ``recover`` is the seed's ``/trigger`` endpoint.

People trigger it from the Prefect UI or the CLI, other systems through the Prefect REST API
(``POST /api/deployments/{id}/create_flow_run``). The recovery runs inside this flow run (no
subflow): one flow run per trigger, whose tasks are the workflow's steps.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run as current_flow_run
from pydantic import Field

from flows.common import execute_workflow, install_hooks, on_cancelled, on_crashed, refused_state
from recovery.blocking import blocking
from recovery.config.loader import load_config
from recovery.engine.lifecycle import Phase, RunDetails, emit
from recovery.engine.runtime import RecoveryRequest, record_dry_run
from recovery.engine.triggers import admit, validate_request
from recovery.engine.workflows import describe_plan, workflow_named
from recovery.enums import RunState, RunType
from recovery.errors import RecoveryRefused
from recovery.redact import install_log_redaction
from recovery.services import services_for

TriggerType = Literal["manual", "emergency", "scheduled"]


@flow(name="recover", on_cancellation=[on_cancelled], on_crashed=[on_crashed])
async def recover(
    target: Annotated[str, Field(min_length=1, max_length=63, description="Target to recover.")],
    requested_by: Annotated[str, Field(min_length=1, max_length=128, description="Who asks (audited).")],
    type: TriggerType = "manual",
    workflow: Annotated[str | None, Field(description="Override the target kind's workflow.")] = None,
    reason: Annotated[str | None, Field(max_length=2000, description="Why (required for emergency).")] = None,
    dry_run: Annotated[bool, Field(description="Record and return the plan; touch nothing.")] = False,
    request_id: Annotated[
        str | None, Field(description="Audit id to use (lets callers find the row).")
    ] = None,
    config_path: str | None = None,
) -> dict[str, Any] | State[Any]:
    """Recover ``target`` now (manual, scheduled or emergency trigger), audited."""
    install_log_redaction()
    logger = get_run_logger()
    config = load_config(config_path)
    # Fields in order: target, workflow, run_type, requested_by, reason.
    request = RecoveryRequest(target, workflow, type, requested_by, reason, dry_run=dry_run)
    workflow_name = validate_request(config, request)
    if dry_run:
        run_id = await blocking(record_dry_run, config, request)
        plan = describe_plan(
            config, config.target(target), workflow_named(workflow_name, config.target(target))
        )
        logger.info("dry run of %s:\n%s", target, "\n".join(plan))
        return {
            "run_id": run_id,
            "target": target,
            "workflow": workflow_name,
            "state": "dry_run",
            "plan": plan,
        }
    run_id = request_id or str(current_flow_run.id)
    services = services_for(config)
    try:
        await blocking(admit, config, services.state, services.audit, request, workflow_name, run_id)
    except RecoveryRefused as exc:
        install_hooks()
        await emit(
            RunDetails(
                Phase.FINISHED,
                target,
                workflow_name,
                RunType(type),
                run_id,
                RunState.REFUSED,
                reason=exc.reason,
            )
        )
        return refused_state(exc.reason)
    return await execute_workflow(workflow_name, request, config, run_id=run_id)
