"""Audit writes as data: each ``AuditStore`` write is one ``AuditOp``, applied live or replayed.

An op holds everything its write needs, timestamps included: they are captured when the op is
built, so a record replayed from the spool an hour later still says when the recovery acted.
``apply_op`` is the only code turning an op into rows, for the live write and the replay alike,
so a replayed record gives exactly the row the live write would have given.

Replay may apply a record more than once (a crash between its commit and the spool's cursor; a
live commit whose answer was lost, then spooled). Every op is therefore idempotent, and the
step ops are monotonic, so a late or repeated one never undoes a newer write:

* ``start_run``/``refuse`` insert the run once: on replay an existing row with the same target,
  workflow and start time is this record, already applied (anything else is rejected);
* ``step_attempt`` and ``step_finished`` only touch a step still ``pending``/``running``;
* ``finish_run`` and ``set_flow_run_id`` set absolute values (same record, same result).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from recovery.audit.models import RUN_STATES, RecoveryRun, RecoveryStep
from recovery.audit.records import AuditRejected, PlannedStep, aware, error_text
from recovery.redact import redact

FORMAT_VERSION = 1
OPEN_STEP_STATES = ("pending", "running")


@dataclass(frozen=True)
class AuditOp:
    """One audit write. ``id`` is unique per record (spool lines, replay logs)."""

    op: str
    run_id: str
    at: datetime
    data: dict[str, Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_line(self) -> str:
        """One JSON line (no newline inside: ``json.dumps`` escapes them)."""
        record = {
            "v": FORMAT_VERSION,
            "id": self.id,
            "op": self.op,
            "run_id": self.run_id,
            "at": self.at.isoformat(),
            "data": self.data,
        }
        return json.dumps(record, separators=(",", ":"), default=str)

    @classmethod
    def from_line(cls, line: str | bytes) -> AuditOp:
        """Parse a spool line; ``ValueError`` if it is not a record this version can apply."""
        record = json.loads(line)
        if not isinstance(record, dict) or record.get("v") != FORMAT_VERSION or record.get("op") not in OPS:
            raise ValueError("not an audit spool record of format 1")
        at = aware(datetime.fromisoformat(record["at"]))
        assert at is not None
        return cls(record["op"], str(record["run_id"]), at, dict(record["data"]), str(record["id"]))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _when(value: Any) -> datetime | None:
    return aware(datetime.fromisoformat(value)) if value else None


def redact_detail(value: Any) -> Any:
    """A step's detail with every string, however deeply nested, redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_detail(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_detail(v) for v in value]
    return value


def _error_type(error: BaseException | str | None, given: str | None = None) -> str | None:
    if error is None:
        return None
    return given or (type(error).__name__ if isinstance(error, BaseException) else "Error")


# --- builders (one per AuditStore write) ------------------------------------------------------


def start_run_op(
    *,
    run_id: str,
    now: datetime,
    target: str,
    workflow: str,
    run_type: str,
    steps: Sequence[PlannedStep],
    requested_by: str | None,
    reason: str | None,
    detected_reason: str | None,
    first_failure_at: datetime | None,
    detected_at: datetime | None,
    dry_run: bool,
    flow_run_id: str | None,
    state: str,
    refused_because: str | None = None,
) -> AuditOp:
    if state not in RUN_STATES:
        raise ValueError(f"invalid run state {state}")
    data = {
        "target": target,
        "workflow": workflow,
        "type": run_type,
        "state": state,
        "dry_run": dry_run,
        "requested_by": requested_by,
        "reason": error_text(reason),
        "detected_reason": error_text(detected_reason),
        "first_failure_at": _iso(first_failure_at),
        "detected_at": _iso(detected_at),
        "flow_run_id": flow_run_id,
        "steps": [[s.name, s.optional, s.max_attempts] for s in steps],
        "error_type": "RecoveryRefused" if refused_because is not None else None,
        "error_message": error_text(refused_because),
    }
    return AuditOp("refuse" if refused_because is not None else "start_run", run_id, now, data)


def step_attempt_op(run_id: str, name: str, attempt: int, now: datetime) -> AuditOp:
    return AuditOp("step_attempt", run_id, now, {"step": name, "attempt": attempt})


def step_finished_op(
    run_id: str,
    name: str,
    state: str,
    error: BaseException | None,
    detail: dict[str, Any] | None,
    now: datetime,
) -> AuditOp:
    data = {
        "step": name,
        "state": state,
        "error_type": _error_type(error),
        "error_message": error_text(error),
        "detail": redact_detail(detail) if detail is not None else None,
    }
    return AuditOp("step_finished", run_id, now, data)


def finish_run_op(
    run_id: str, state: str, error: BaseException | str | None, error_type: str | None, now: datetime
) -> AuditOp:
    if state not in RUN_STATES:
        raise ValueError(f"invalid run state {state}")
    data = {
        "state": state,
        "has_error": error is not None,
        "error_type": _error_type(error, error_type),
        "error_message": error_text(error),
    }
    return AuditOp("finish_run", run_id, now, data)


def set_flow_run_id_op(run_id: str, flow_run_id: str, now: datetime) -> AuditOp:
    return AuditOp("set_flow_run_id", run_id, now, {"flow_run_id": flow_run_id})


# --- applying ---------------------------------------------------------------------------------


def _start_run(session: Session, op: AuditOp, replay: bool) -> None:
    d = op.data
    if replay:
        existing = session.get(RecoveryRun, op.run_id)
        if existing is not None:
            started = aware(existing.started_at)
            same = (existing.target, existing.workflow) == (d["target"], d["workflow"])
            if same and started is not None and abs((started - op.at).total_seconds()) < 0.001:
                return  # this very record, applied before (live, or by an interrupted replay)
            raise AuditRejected(f"audit run id {op.run_id} is already used by another run")
    finished = d["state"] != "in_progress"
    row = RecoveryRun(
        id=op.run_id,
        target=d["target"],
        workflow=d["workflow"],
        type=d["type"],
        state=d["state"],
        dry_run=d["dry_run"],
        requested_by=d["requested_by"],
        reason=d["reason"],
        detected_reason=d["detected_reason"],
        first_failure_at=_when(d["first_failure_at"]),
        detected_at=_when(d["detected_at"]),
        started_at=op.at,
        finished_at=op.at if finished else None,
        duration_seconds=0.0 if finished else None,
        error_type=d["error_type"],
        error_message=d["error_message"],
        flow_run_id=d["flow_run_id"],
    )
    row.steps = [
        RecoveryStep(
            position=i,
            name=name,
            optional=optional,
            state="skipped" if finished else "pending",
            attempts=0,
            max_attempts=max_attempts,
        )
        for i, (name, optional, max_attempts) in enumerate(d["steps"])
    ]
    session.add(row)


def _step(session: Session, run_id: str, name: str) -> RecoveryStep:
    step = session.scalars(
        select(RecoveryStep).where(RecoveryStep.run_id == run_id, RecoveryStep.name == name)
    ).first()
    if step is None:
        raise AuditRejected(f"audit step {name!r} of run {run_id} not found")
    return step


def _step_attempt(session: Session, op: AuditOp) -> None:
    step = _step(session, op.run_id, op.data["step"])
    if step.state not in OPEN_STEP_STATES:
        return  # a late or repeated attempt never re-opens a finished step
    step.state = "running"
    step.attempts = max(step.attempts, op.data["attempt"])
    if step.started_at is None:
        step.started_at = op.at


def _step_finished(session: Session, op: AuditOp) -> None:
    step = _step(session, op.run_id, op.data["step"])
    if step.state not in OPEN_STEP_STATES:
        return  # already finished (this record applied before, or the run was finished)
    d = op.data
    step.state = d["state"]
    step.finished_at = op.at
    started = aware(step.started_at)
    step.duration_seconds = (op.at - started).total_seconds() if started else 0.0
    step.error_type = d["error_type"]
    step.error_message = d["error_message"]
    if d["detail"] is not None:
        step.detail = d["detail"]


def _finish_run(session: Session, op: AuditOp) -> None:
    row = session.get(RecoveryRun, op.run_id)
    if row is None:
        raise AuditRejected(f"audit row {op.run_id} not found")
    d = op.data
    row.state = d["state"]
    row.finished_at = op.at
    row.duration_seconds = (op.at - aware(row.started_at)).total_seconds()  # type: ignore[operator]
    if d["has_error"]:
        row.error_type = d["error_type"]
        row.error_message = d["error_message"]
    # Steps that never ran stay visible as skipped rather than eternally pending.
    session.execute(
        update(RecoveryStep)
        .where(RecoveryStep.run_id == op.run_id, RecoveryStep.state.in_(OPEN_STEP_STATES))
        .values(state="skipped")
    )


def _set_flow_run_id(session: Session, op: AuditOp) -> None:
    session.execute(
        update(RecoveryRun).where(RecoveryRun.id == op.run_id).values(flow_run_id=op.data["flow_run_id"])
    )


OPS = ("start_run", "refuse", "step_attempt", "step_finished", "finish_run", "set_flow_run_id")


def apply_op(session: Session, op: AuditOp, *, replay: bool = False) -> None:
    """Apply ``op`` inside the caller's transaction. ``replay``: the record may have been
    applied before (see the module docstring); raises ``AuditRejected`` for a record the
    database can never take (unknown run or step, a run id used by another run)."""
    if op.op in ("start_run", "refuse"):
        _start_run(session, op, replay)
    elif op.op == "step_attempt":
        _step_attempt(session, op)
    elif op.op == "step_finished":
        _step_finished(session, op)
    elif op.op == "finish_run":
        _finish_run(session, op)
    elif op.op == "set_flow_run_id":
        _set_flow_run_id(session, op)
    else:
        raise ValueError(f"unknown audit op {op.op!r}")
