"""What the audit store reads back: frozen run and step records, and their text rules.

``error_text`` is the one way an error enters the audit: redacted, then truncated; a database
error is reduced to its class and the driver's first line (never the statement or its values).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from recovery.audit.models import RecoveryRun
from recovery.errors import RecoveryError, RecoveryRefused
from recovery.jsonable import to_json
from recovery.redact import redact

MAX_MESSAGE = 2000


class AuditUnavailable(RecoveryError):
    """The audit database cannot be reached or written; recoveries must not run unaudited."""


class AuditRejected(AuditUnavailable):
    """The audit database answered and refused the write (unknown run or step, duplicate id,
    invalid value): retrying it later cannot help, so it is never spooled."""


class NoDurableRecord(AuditUnavailable, RecoveryRefused):
    """Neither the audit store nor the local spool can record this write: the recovery must not
    act (refused before any action; a person has to free the disk or fix the store)."""

    def __init__(self, message: str) -> None:
        RecoveryRefused.__init__(self, message, escalate=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    # SQLite drops tzinfo; everything is stored in UTC, so naive values are UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# SQLAlchemy appends the statement, its bound values and a docs link to str(exc); the values
# are whatever the caller sent (a NUL byte, a password typed into a reason), so they never
# leave this module. Also applied to any text, in case a wrapper copied str(exc) into its own.
_SQL_SECTIONS = re.compile(r"\s*(\[SQL: |\[parameters: |\(Background on this error at: ).*", re.DOTALL)


def db_error_text(error: SQLAlchemyError) -> str:
    """``IntegrityError: UNIQUE constraint failed: recovery_runs.id``: the class and the DBAPI
    error's first line; the driver's further lines (DETAIL: Key (id)=(...)) carry values too."""
    orig = getattr(error, "orig", None)
    text = _SQL_SECTIONS.sub("", str(orig if orig is not None else error)).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def error_text(error: BaseException | str | None) -> str | None:
    if error is None:
        return None
    text = db_error_text(error) if isinstance(error, SQLAlchemyError) else str(error)
    return redact(_SQL_SECTIONS.sub("", text))[:MAX_MESSAGE]


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
    rung: int | None = None  # escalation ladder rung (1-based); None: not a ladder run

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
        row.rung,
    )
