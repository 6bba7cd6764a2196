"""What the audit store reads back: frozen run and step records, and their text rules.

``error_text`` is the one way an error enters the audit: redacted, then truncated.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from recovery.audit.models import RecoveryRun
from recovery.errors import RecoveryError
from recovery.jsonable import to_json
from recovery.redact import redact

MAX_MESSAGE = 2000


class AuditUnavailable(RecoveryError):
    """The audit database cannot be reached or written; recoveries must not run unaudited."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    # SQLite drops tzinfo; everything is stored in UTC, so naive values are UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def error_text(error: BaseException | str | None) -> str | None:
    if error is None:
        return None
    return redact(str(error))[:MAX_MESSAGE]


@dataclass(frozen=True)
class PlannedStep:
    name: str
    optional: bool = False
    max_attempts: int = 1


@dataclass(frozen=True)
class StepRecord:
    name: str
    state: str
    attempts: int
    max_attempts: int
    optional: bool
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    error_type: str | None
    error_message: str | None
    detail: dict[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        return to_json(self, exclude=("started_at", "finished_at"))


@dataclass(frozen=True)
class RunRecord:
    id: str
    target: str
    workflow: str
    type: str
    state: str
    dry_run: bool
    requested_by: str | None
    reason: str | None
    detected_reason: str | None
    first_failure_at: datetime | None
    detected_at: datetime | None
    started_at: datetime
    finished_at: datetime | None
    duration_seconds: float | None
    error_type: str | None
    error_message: str | None
    flow_run_id: str | None
    steps: tuple[StepRecord, ...]
    lock_owner: str | None = None  # bookkeeping for reconcile; a lock token is not for display

    def as_json(self) -> dict[str, Any]:
        return to_json(self, exclude=("lock_owner",), naive_tz=UTC)


def run_record(row: RecoveryRun) -> RunRecord:
    steps = tuple(
        StepRecord(
            s.name,
            s.state,
            s.attempts,
            s.max_attempts,
            s.optional,
            aware(s.started_at),
            aware(s.finished_at),
            s.duration_seconds,
            s.error_type,
            s.error_message,
            s.detail,
        )
        for s in row.steps
    )
    started = aware(row.started_at)
    assert started is not None
    return RunRecord(
        row.id,
        row.target,
        row.workflow,
        row.type,
        row.state,
        row.dry_run,
        row.requested_by,
        row.reason,
        row.detected_reason,
        aware(row.first_failure_at),
        aware(row.detected_at),
        started,
        aware(row.finished_at),
        row.duration_seconds,
        row.error_type,
        row.error_message,
        row.flow_run_id,
        steps,
        row.lock_owner,
    )
