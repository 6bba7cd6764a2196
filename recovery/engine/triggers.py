"""Admission of manual, scheduled and emergency triggers (the seed's ``/trigger`` endpoint).

Automatic recoveries are admitted by the monitor's lock. Requests that people or other systems
send are checked here first: ``requested_by`` is required, an emergency needs a reason, and each
target admits at most ``manual_triggers.max_triggers`` per sliding window across all workers
(a Redis sorted set), so a retry loop in a caller cannot turn into a recovery storm. A refused
trigger is audited like any other run, in state ``refused``. Every admin operation (``recover``,
``reset-circuit-breaker``, ``clear-cache``, ``reconnect-database``) counts against that window.

Audit ids: attempt 1 of a flow run is audited as the caller's ``request_id`` or the flow run's
id; a re-run of the same flow run (the UI's Retry) is a new attempt with its own row, linked to
the first through the ``flow_run_id`` column (``attempt_id``). A ``request_id`` that another flow
run already used is refused (``request_id_taken``): it is the caller's handle on one run.
"""

from __future__ import annotations

import re
import time
import uuid

from recovery.audit.store import AuditStore
from recovery.backends.state import SharedState
from recovery.config.loader import RecoveryConfig
from recovery.engine.runtime import RecoveryRequest, refuse
from recovery.engine.workflows import select_workflow, workflow_named
from recovery.errors import ConfigError, RecoveryRefused

MANUAL_TYPES = ("manual", "emergency", "scheduled")

# What a caller's free text may be (requested_by, reason, a cache pattern): the admin
# deployments' parameter schemas use these patterns (flows/admin.py), the CLI ``check_text``.
TEXT_MAX = 200
# At least one character that is neither whitespace nor a control character: "   " names nobody.
NOT_BLANK = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
# Fits the audit id column (VARCHAR(36)); no dot, so it never collides with a retry's attempt id.
REQUEST_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,35}$"


def check_text(field: str, value: str) -> None:
    """``ConfigError`` unless ``value`` is 1-200 characters, not blank, no control characters."""
    if not value.strip():
        raise ConfigError(field, "must not be empty")
    if len(value) > TEXT_MAX:
        raise ConfigError(field, f"at most {TEXT_MAX} characters")
    if not re.fullmatch(NOT_BLANK, value):
        raise ConfigError(field, "must not contain control characters")


def validate_request(config: RecoveryConfig, request: RecoveryRequest) -> str:
    """Check a trigger's arguments; return the workflow it will run. ``ConfigError`` if bad."""
    target = config.target(request.target)
    if request.run_type not in MANUAL_TYPES:
        raise ConfigError("type", f"must be one of {', '.join(MANUAL_TYPES)}, not {request.run_type!r}")
    if not (request.requested_by or "").strip():
        raise ConfigError("requested_by", "required: who is asking for this recovery")
    if request.run_type == "emergency" and not (request.reason or "").strip():
        raise ConfigError("reason", "required for an emergency recovery")
    for field in ("requested_by", "reason"):
        if (value := getattr(request, field)) is not None:
            check_text(field, value)
    spec = (
        workflow_named(request.workflow, target, config)
        if request.workflow
        else select_workflow(target, config=config)
    )
    return spec.name


def attempt_id(flow_run_id: str, run_count: int, first: str | None = None) -> str:
    """The audit id of attempt ``run_count`` of a flow run: ``first`` (the caller's request_id)
    or the flow run id for attempt 1, ``<flow run id, 32 hex>.<n>`` for attempt n >= 2.

    The audit id column is VARCHAR(36): 32 hex digits, a dot and up to 3 digits fit; a dot never
    appears in a caller's request_id (its schema pattern), so an attempt id cannot collide with one.
    """
    if run_count <= 1:
        return first or flow_run_id
    derived = f"{uuid.UUID(flow_run_id).hex}.{run_count}"
    return derived if len(derived) <= 36 else str(uuid.uuid5(uuid.UUID(flow_run_id), str(run_count)))


def request_id_taken(audit: AuditStore, request_id: str, flow_run_id: str) -> str | None:
    """Why ``request_id`` cannot name this flow run's audit row (another run used it), or None."""
    existing = audit.run(request_id)
    if existing is None or existing.flow_run_id == flow_run_id:
        return None
    return (
        f"request_id {request_id} was already used by flow run {existing.flow_run_id}; "
        "not started (send a new request_id)"
    )


def admit(
    config: RecoveryConfig,
    state: SharedState,
    audit: AuditStore,
    request: RecoveryRequest,
    workflow: str,
    run_id: str | None = None,
    now: float | None = None,
    flow_run_id: str | None = None,
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
    refuse(audit, request, workflow, reason, run_id, flow_run_id=flow_run_id or run_id)
    raise RecoveryRefused(reason)
