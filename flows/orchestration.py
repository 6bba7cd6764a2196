"""The Prefect side of the ``deployment`` and ``approval`` step types.

The core defines the capability (``recovery.kinds.orchestrator.Orchestrator``) and stays
Prefect-free; this module implements it with ``run_deployment`` and ``pause_flow_run`` and
``flows.common.install_hooks`` installs it before any recovery runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from prefect import get_client
from prefect.deployments import arun_deployment
from prefect.exceptions import FlowPauseTimeout, ObjectNotFound
from prefect.flow_runs import apause_flow_run
from prefect.input import RunInput
from prefect.states import Cancelling

from recovery.errors import PermanentError, StepFailed, clip
from recovery.kinds.base import Detail
from recovery.kinds.orchestrator import Approval, set_orchestrator
from recovery.redact import redact

API_GRACE_SECONDS = 30.0  # creating the run and reading its state, beyond the step's own wait
CANCEL_TIMEOUT_SECONDS = 10.0


class ApprovalInput(RunInput):
    """The form an admin fills in the Prefect UI (or sends as ``run_input`` to
    ``POST /api/flow_runs/{id}/resume``) to answer an ``approval`` step."""

    approve: bool = False
    comment: str = ""
    approver: str = ""  # who answers (audited); Prefect OSS has no user identity of its own


class PrefectOrchestrator:
    async def run_deployment(self, name: str, parameters: dict[str, Any], timeout_seconds: float) -> Detail:
        """Run ``flow/deployment`` as a subflow of this run and wait for its final state."""
        try:
            run = await asyncio.wait_for(
                arun_deployment(name, parameters=parameters, timeout=timeout_seconds),
                timeout_seconds + API_GRACE_SECONDS,
            )
        except ObjectNotFound:
            raise PermanentError(f"deployment '{clip(name)}' not found") from None
        state = run.state
        detail: dict[str, Any] = {
            "deployment": name,
            "flow_run_id": str(run.id),
            "state": state.name if state else "unknown",
        }
        if state is not None and state.is_completed():
            return detail
        if state is None or not state.is_final():
            detail["timed_out"] = True
            await self._cancel(run.id)
            raise StepFailed(
                f"deployment {name} did not finish within {timeout_seconds:g}s (cancelled)", detail
            )
        detail["message"] = redact(state.message or "")
        raise StepFailed(f"deployment {name} ended {state.name}", detail)

    async def _cancel(self, flow_run_id: Any) -> None:
        """Best effort: a run we stopped waiting for must not go on acting unobserved."""
        with contextlib.suppress(Exception):
            async with get_client() as client:
                await asyncio.wait_for(
                    client.set_flow_run_state(flow_run_id, Cancelling(), force=True), CANCEL_TIMEOUT_SECONDS
                )

    async def approve(self, message: str, timeout_seconds: float) -> Approval | None:
        """Pause this flow run until an admin answers the form, or ``None`` after the timeout."""
        form = ApprovalInput.with_initial_data(description=message)
        poll = max(1, min(10, int(timeout_seconds // 10)))
        try:
            answer = await apause_flow_run(
                wait_for_input=form, timeout=max(1, round(timeout_seconds)), poll_interval=poll
            )
        except FlowPauseTimeout:
            return None
        return Approval(bool(answer.approve), answer.approver or None, answer.comment or None)


def install_orchestrator() -> None:
    set_orchestrator(PrefectOrchestrator())
