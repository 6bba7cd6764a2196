"""What only the orchestrator can do for a step: run a deployment, ask a person for approval.

The core is Prefect-free (import-linter), yet the ``deployment`` and ``approval`` step types
need Prefect (``run_deployment``, ``pause_flow_run``). So the core defines the capability here
and the flows layer installs its implementation (``flows/orchestration.py``, installed by
``flows.common.install_hooks`` before any run): the steps call ``orchestrator()``, and outside
a Prefect flow run (no implementation installed) they fail with a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from recovery.errors import PermanentError
from recovery.kinds.base import Detail


@dataclass(frozen=True)
class Approval:
    """A person's answer; ``None`` from ``approve`` means nobody answered in time."""

    approved: bool
    approver: str | None = None
    comment: str | None = None


class Orchestrator(Protocol):
    async def run_deployment(self, name: str, parameters: dict[str, Any], timeout_seconds: float) -> Detail:
        """Run deployment ``flow/deployment`` and wait for its final state; ``StepFailed`` (with
        the flow run id and state as detail) unless it completed within ``timeout_seconds``."""
        ...

    async def approve(self, message: str, timeout_seconds: float) -> Approval | None:
        """Pause the running flow until a person answers (``None``: timed out)."""
        ...


_INSTALLED: list[Orchestrator] = []


def set_orchestrator(impl: Orchestrator | None) -> None:
    """Install (or with ``None`` remove) the orchestrator; the flows layer calls this."""
    _INSTALLED.clear()
    if impl is not None:
        _INSTALLED.append(impl)


def orchestrator(step_type: str) -> Orchestrator:
    if not _INSTALLED:
        raise PermanentError(
            f"a {step_type} step runs only inside a Prefect flow run (recovery serve / recover)"
        )
    return _INSTALLED[0]
