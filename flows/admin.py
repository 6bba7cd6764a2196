"""What a caller may pass to an admin deployment, and the gate every admin run passes first.

Admin deployments (``recover``, ``reset-circuit-breaker``, ``clear-cache``,
``reconnect-database``) take only these caller-facing types. Prefect builds a deployment's
parameter schema from the flow's signature, so the constraints here (length, no control
characters, not blank, a request id's alphabet) are checked by the API before a flow run exists,
and again by Prefect's parameter validation when the run starts (should a PATCH have turned the
schema check off). Help text lives in each flow's docstring ``Args:`` section: Prefect's schema
builder passes its own ``Field(description=<docstring entry>)`` for every parameter, which
replaces a description given in ``Annotated[..., Field(description=...)]``
(``prefect._internal.pydantic.v2_schema.process_v2_params``).

The config is never a parameter: every flow loads the worker's (``RECOVERY_CONFIG``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.runtime import flow_run as current_flow_run
from pydantic import Field

from flows.common import execute_workflow, install_hooks, refused_state
from recovery.blocking import blocking
from recovery.config.loader import NAME_PATTERN, RecoveryConfig
from recovery.engine.lifecycle import Phase, RunDetails, emit
from recovery.engine.runtime import RecoveryRequest, refuse
from recovery.engine.triggers import (
    NOT_BLANK,
    REQUEST_ID,
    TEXT_MAX,
    admit,
    attempt_id,
    request_id_taken,
    validate_request,
)
from recovery.enums import RunState, RunType
from recovery.errors import RecoveryRefused
from recovery.services import services_for

TargetName = Annotated[str, Field(max_length=63, pattern=NAME_PATTERN)]
WorkflowName = Annotated[str, Field(max_length=63, pattern=NAME_PATTERN)]
RequestedBy = Annotated[str, Field(max_length=TEXT_MAX, pattern=NOT_BLANK)]
Text = Annotated[str, Field(max_length=TEXT_MAX, pattern=NOT_BLANK)]
RequestId = Annotated[str, Field(max_length=36, pattern=REQUEST_ID)]
# ``scheduled`` is not a caller's choice: a run a deployment schedule created is audited as
# scheduled whatever it says (``trigger_type``).
CallerType = Literal["manual", "emergency"]


def trigger_type(requested: str) -> str:
    """``scheduled`` for a run created by a deployment schedule, else what the caller asked."""
    ctx = FlowRunContext.get()
    auto = bool(ctx and ctx.flow_run and ctx.flow_run.auto_scheduled)
    return RunType.SCHEDULED.value if auto else requested


async def gate(
    config: RecoveryConfig, request: RecoveryRequest, workflow: str, request_id: str | None = None
) -> tuple[str, State[Any] | None]:
    """This attempt's audit id, and a ``Refused`` state if the request may not run.

    Refused, audited as ``refused``: a ``request_id`` another flow run already used, or the
    target's manual-trigger window spent (every admin operation counts against it).
    """
    flow_run_id = str(current_flow_run.id)
    run_count = current_flow_run.run_count
    services = services_for(config)
    taken = await blocking(request_id_taken, services.audit, request_id, flow_run_id) if request_id else None
    run_id = attempt_id(flow_run_id, run_count, None if taken else request_id)
    try:
        if taken:
            await blocking(refuse, services.audit, request, workflow, taken, run_id, flow_run_id)
            raise RecoveryRefused(taken)
        await blocking(
            admit, config, services.state, services.audit, request, workflow, run_id, flow_run_id=flow_run_id
        )
    except RecoveryRefused as exc:
        return run_id, await _announce_refusal(request, workflow, run_id, exc.reason)
    return run_id, None


async def _announce_refusal(request: RecoveryRequest, workflow: str, run_id: str, reason: str) -> State[Any]:
    """Report an audited refusal to the run hooks (logs, metrics, events); the run's end state."""
    install_hooks()
    await emit(
        RunDetails(
            Phase.FINISHED, request.target, workflow, RunType(request.run_type), run_id, RunState.REFUSED,
            reason=reason,
        )
    )  # fmt: skip
    return refused_state(reason)


async def refuse_admitted(
    config: RecoveryConfig, request: RecoveryRequest, workflow: str, run_id: str, reason: str
) -> State[Any]:
    """Audit a request the gate let through as ``refused`` after all (e.g. the target failed a
    pre-check), announce it, and return the ``Refused`` state the run ends in."""
    flow_run_id = str(current_flow_run.id)
    await blocking(refuse, services_for(config).audit, request, workflow, reason, run_id, flow_run_id)
    return await _announce_refusal(request, workflow, run_id, reason)


async def run_operation(
    config: RecoveryConfig, request: RecoveryRequest, request_id: str | None = None
) -> dict[str, Any] | State[Any]:
    """Validate, pass the gate, run the workflow: the body of every admin recovery flow."""
    workflow = validate_request(config, request)  # ConfigError: the run fails before any action
    run_id, refused = await gate(config, request, workflow, request_id)
    if refused is not None:
        return refused
    return await execute_workflow(workflow, request, config, run_id=run_id)
