"""Audit writes as data: each ``AuditStore`` write is one ``AuditOp``, applied live or replayed.

An op holds everything its write needs, timestamps included: they are captured when the op is
built, so a record replayed from the spool an hour later still says when the recovery acted.
Every string that may carry a secret is redacted here, before the op is written anywhere (the
store, the spool). ``recovery.audit.fold`` is the only code turning ops into rows, for the live
write and the replay alike, so a replayed record gives exactly the row the live write would have.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from recovery.audit.models import RUN_STATES
from recovery.audit.records import PlannedStep, aware, error_text
from recovery.redact import redact

FORMAT_VERSION = 1
OPS = ("start_run", "refuse", "step_attempt", "step_finished", "finish_run", "set_flow_run_id")
START_OPS = ("start_run", "refuse")


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


def when(value: Any) -> datetime | None:
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
    lock_owner: str | None = None,
    rung: int | None = None,
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
        "lock_owner": lock_owner,  # reconcile tells a dead run's row from a live one's by it
        "rung": rung,  # escalation ladder (revision 0004)
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
