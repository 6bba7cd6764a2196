"""Admission of manual, scheduled and emergency triggers (the seed's ``/trigger`` endpoint).

Automatic recoveries are admitted by the monitor's lock. Requests that people or other systems
send are checked here first: ``requested_by`` is required, an emergency needs a reason, and each
target admits at most ``manual_triggers.max_triggers`` per sliding window across all workers
(a Redis sorted set), so a retry loop in a caller cannot turn into a recovery storm. A refused
trigger is audited like any other run, in state ``refused``.
"""

from __future__ import annotations

import time

from recovery.audit.store import AuditStore
from recovery.backends.state import SharedState
from recovery.config.loader import RecoveryConfig
from recovery.engine.runtime import RecoveryRequest, refuse
from recovery.engine.workflows import select_workflow, workflow_named
from recovery.errors import ConfigError, RecoveryRefused

MANUAL_TYPES = ("manual", "emergency", "scheduled")


def validate_request(config: RecoveryConfig, request: RecoveryRequest) -> str:
    """Check a trigger's arguments; return the workflow it will run. ``ConfigError`` if bad."""
    target = config.target(request.target)
    if request.run_type not in MANUAL_TYPES:
        raise ConfigError("type", f"must be one of {', '.join(MANUAL_TYPES)}, not {request.run_type!r}")
    if not (request.requested_by or "").strip():
        raise ConfigError("requested_by", "required: who is asking for this recovery")
    if request.run_type == "emergency" and not (request.reason or "").strip():
        raise ConfigError("reason", "required for an emergency recovery")
    spec = workflow_named(request.workflow, target) if request.workflow else select_workflow(target)
    return spec.name


def admit(
    config: RecoveryConfig,
    state: SharedState,
    audit: AuditStore,
    request: RecoveryRequest,
    workflow: str,
    run_id: str | None = None,
    now: float | None = None,
) -> None:
    """Count the trigger against the target's window; audit and raise ``RecoveryRefused`` if over."""
    limit = config.manual_triggers
    result = state.window_hit(
        f"manual:{request.target}",
        limit.max_triggers,
        limit.window_seconds,
        time.time() if now is None else now,
    )
    if result.allowed:
        return
    reason = (
        f"manual trigger rate limit for {request.target}: {limit.max_triggers} per "
        f"{limit.window_seconds:g}s reached; retry in {result.retry_after_seconds:.0f}s"
    )
    refuse(audit, request, workflow, reason, run_id, flow_run_id=run_id)
    raise RecoveryRefused(reason)
