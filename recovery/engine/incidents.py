"""Incidents: one outage of one target, so escalations page once per outage, not once per run.

An incident is named by its target and the epoch seconds of its first failed probe
(``first_failure_at``: the health hash keeps it until the target is healthy again; every
automatic run of the outage carries it and its audit row stores it, refusals included). The id
is derived, never stored: ``incident_id`` gives the same UUID in the flow, a crash hook, the
monitor's reconcile pass and another worker. A run without ``first_failure_at`` (a person's
manual or emergency run) is its own incident.

``first_report`` tells whether a run's end is the incident's first of its kind, from the audit
rows of the incident (durable, shared by every process): the first failed (or cancelled, not
taken over) recovery reports ``recovery.failed``; the first refusal by a given strategy check
(the reason's tag, e.g. ``budget``) reports ``recovery.refused``. Later ones are audited and
logged as usual, without a new event.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from recovery.audit.records import RunRecord
from recovery.audit.store import AuditStore
from recovery.engine.takeover import TAKEN_OVER
from recovery.enums import RunState

INCIDENT_NAMESPACE = uuid.UUID("8d7f0c1e-2b4a-4c55-9e3f-5a6b7c8d9e01")  # fixed: ids must be stable


def incident_id(target: str, first_failure_at: float | None, run_id: str | None) -> str:
    """The incident's stable id (a UUID string); a run without ``first_failure_at``: its own."""
    if first_failure_at is None:
        return str(uuid.uuid5(INCIDENT_NAMESPACE, f"run:{target}:{run_id}"))
    # Milliseconds: the float travels through Redis and the audit store as text/timestamps.
    return str(uuid.uuid5(INCIDENT_NAMESPACE, f"{target}:{round(first_failure_at * 1000)}"))


def reason_tag(reason: str | None) -> str:
    """A refusal's strategy check: the text before the first ':' (``budget``, ``adaptive``...)."""
    return (reason or "").split(":", 1)[0]


def _counts(run: RunRecord, state: RunState, reason: str | None) -> bool:
    if state is RunState.REFUSED:
        return run.state == RunState.REFUSED and reason_tag(run.error_message) == reason_tag(reason)
    if run.state == RunState.FAILED:
        return True
    return run.state == RunState.CANCELLED and run.error_type != TAKEN_OVER


def first_report(
    audit: AuditStore,
    target: str,
    first_failure_at: float | None,
    run_id: str | None,
    state: RunState,
    reason: str | None = None,
    rung: int | None = None,
) -> bool:
    """True unless another run of the same incident (and escalation ``rung``, for a ladder: each
    rung that fails pages once) already ended like this one (``state``: failed/cancelled, or a
    refusal with the same tag as ``reason``). Raises if the audit store cannot be read (the
    caller reports then: better twice than never)."""
    if first_failure_at is None:
        return True
    when = datetime.fromtimestamp(first_failure_at, UTC)
    return not any(
        _counts(run, state, reason)
        for run in audit.incident_runs(target, when)
        if run.id != run_id and (rung is None or run.rung == rung)
    )
