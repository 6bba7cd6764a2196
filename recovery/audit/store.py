"""AuditStore: write-ahead audit of recovery runs and steps; read back as frozen records.

Works on any SQLAlchemy URL (SQLite by default, PostgreSQL in production). The schema is
created by Alembic migrations on first use; a process that finds the schema at head skips
Alembic entirely, which keeps read-only CLI commands fast.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, selectinload

from recovery.audit.db import get_engine, migrate
from recovery.audit.models import RUN_STATES, RecoveryRun, RecoveryStep
from recovery.audit.records import (
    AuditUnavailable,
    PlannedStep,
    RunRecord,
    aware,
    error_text,
    run_record,
    utcnow,
)
from recovery.redact import redact, redact_url

__all__ = ["AuditStore", "AuditUnavailable", "PlannedStep", "RunRecord", "error_text"]


class AuditStore:
    """Write-ahead audit trail. Every method raises ``AuditUnavailable`` (redacted) on DB errors."""

    def __init__(self, url: str) -> None:
        self.description = redact_url(url)
        try:
            self.engine = get_engine(url)
            migrate(self.engine)
        except SQLAlchemyError as exc:
            raise AuditUnavailable(f"audit store {self.description}: {error_text(exc)}") from None

    @contextmanager
    def _session(self) -> Iterator[Session]:
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise AuditUnavailable(f"audit store {self.description}: {error_text(exc)}") from None

    # --- writes -------------------------------------------------------------------------------

    def start_run(
        self,
        *,
        target: str,
        workflow: str,
        run_type: str,
        steps: Sequence[PlannedStep],
        requested_by: str | None = None,
        reason: str | None = None,
        detected_reason: str | None = None,
        first_failure_at: datetime | None = None,
        detected_at: datetime | None = None,
        dry_run: bool = False,
        flow_run_id: str | None = None,
        state: str = "in_progress",
        run_id: str | None = None,
        now: datetime | None = None,
        lock_owner: str | None = None,
    ) -> str:
        """Write the run row and its planned steps before anything is touched.

        ``now`` (default: the current time) becomes ``started_at``; scripted timelines set it.
        ``lock_owner``: the token the run holds its target's lock under (``reconcile``).
        """
        if state not in RUN_STATES:
            raise ValueError(f"invalid run state {state}")
        run_id = run_id or str(uuid.uuid4())
        now = now or utcnow()
        finished = state != "in_progress"
        row = RecoveryRun(
            id=run_id,
            target=target,
            workflow=workflow,
            type=run_type,
            state=state,
            dry_run=dry_run,
            requested_by=requested_by,
            reason=error_text(reason),
            detected_reason=error_text(detected_reason),
            first_failure_at=first_failure_at,
            detected_at=detected_at,
            started_at=now,
            finished_at=now if finished else None,
            duration_seconds=0.0 if finished else None,
            flow_run_id=flow_run_id,
            lock_owner=lock_owner,
        )
        row.steps = [
            RecoveryStep(
                position=i,
                name=s.name,
                optional=s.optional,
                state="skipped" if finished else "pending",
                attempts=0,
                max_attempts=s.max_attempts,
            )
            for i, s in enumerate(steps)
        ]
        with self._session() as session:
            session.add(row)
        return run_id

    def refuse(
        self,
        *,
        target: str,
        workflow: str,
        run_type: str,
        reason: str,
        requested_by: str | None = None,
        flow_run_id: str | None = None,
        run_id: str | None = None,
        request_reason: str | None = None,
        now: datetime | None = None,
    ) -> str:
        """Record a recovery that was not started (lock held, budget exhausted...).

        ``reason`` is why it was refused (stored as the error); ``request_reason`` is the
        requester's own reason for asking.
        """
        run_id = self.start_run(
            target=target,
            workflow=workflow,
            run_type=run_type,
            steps=(),
            state="refused",
            requested_by=requested_by,
            reason=request_reason,
            flow_run_id=flow_run_id,
            run_id=run_id,
            now=now,
        )
        with self._session() as session:
            session.execute(
                update(RecoveryRun)
                .where(RecoveryRun.id == run_id)
                .values(error_type="RecoveryRefused", error_message=error_text(reason))
            )
        return run_id

    def step_attempt(self, run_id: str, name: str, attempt: int) -> None:
        """Mark a step running and count the attempt (called at the start of every attempt)."""
        with self._session() as session:
            step = self._step(session, run_id, name)
            step.state = "running"
            step.attempts = max(step.attempts, attempt)
            if step.started_at is None:
                step.started_at = utcnow()

    def step_finished(
        self,
        run_id: str,
        name: str,
        state: str,
        error: BaseException | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        with self._session() as session:
            step = self._step(session, run_id, name)
            now = utcnow()
            step.state = state
            step.finished_at = now
            started = aware(step.started_at)
            step.duration_seconds = (now - started).total_seconds() if started else 0.0
            step.error_type = type(error).__name__ if error else None
            step.error_message = error_text(error)
            if detail is not None:
                step.detail = {k: (redact(v) if isinstance(v, str) else v) for k, v in detail.items()}

    def finish_run(
        self,
        run_id: str,
        state: str,
        error: BaseException | str | None = None,
        error_type: str | None = None,
        now: datetime | None = None,
    ) -> None:
        """Set the final state; ``now`` (default: the current time) becomes ``finished_at``."""
        if state not in RUN_STATES:
            raise ValueError(f"invalid run state {state}")
        with self._session() as session:
            row = session.get(RecoveryRun, run_id)
            if row is None:
                raise AuditUnavailable(f"audit row {run_id} not found")
            now = now or utcnow()
            row.state = state
            row.finished_at = now
            row.duration_seconds = (now - aware(row.started_at)).total_seconds()  # type: ignore[operator]
            if error is not None:
                row.error_type = error_type or (
                    type(error).__name__ if isinstance(error, BaseException) else "Error"
                )
                row.error_message = error_text(error)
            # Steps that never ran stay visible as skipped rather than eternally pending.
            session.execute(
                update(RecoveryStep)
                .where(RecoveryStep.run_id == run_id, RecoveryStep.state.in_(("pending", "running")))
                .values(state="skipped")
            )

    def orphan_run(self, run_id: str, error_type: str, message: str, now: datetime | None = None) -> bool:
        """Finish a run whose process died: ``failed`` with ``error_type``, its running step
        ``failed``, steps never started ``skipped``. Only a row still ``in_progress`` changes, so
        of two reconcilers (or a reconciler and the run's own late ``finish``) one wins; True if
        this call finished the row."""
        now = now or utcnow()
        message = error_text(message) or ""
        with self._session() as session:
            # The conditional UPDATE comes first: it takes the row's write lock before reading.
            claimed = session.execute(
                update(RecoveryRun)
                .where(RecoveryRun.id == run_id, RecoveryRun.state == "in_progress")
                .values(state="failed", finished_at=now, error_type=error_type, error_message=message)
            )
            if not getattr(claimed, "rowcount", 0):
                return False
            row = session.get(RecoveryRun, run_id)
            assert row is not None  # just updated in this transaction
            row.duration_seconds = (now - aware(row.started_at)).total_seconds()  # type: ignore[operator]
            for step in row.steps:
                if step.state == "running":
                    started = aware(step.started_at)
                    step.state, step.finished_at = "failed", now
                    step.duration_seconds = (now - started).total_seconds() if started else 0.0
                    step.error_type, step.error_message = error_type, message
                elif step.state == "pending":
                    step.state = "skipped"
        return True

    def set_flow_run_id(self, run_id: str, flow_run_id: str) -> None:
        with self._session() as session:
            session.execute(
                update(RecoveryRun).where(RecoveryRun.id == run_id).values(flow_run_id=flow_run_id)
            )

    @staticmethod
    def _step(session: Session, run_id: str, name: str) -> RecoveryStep:
        step = session.scalars(
            select(RecoveryStep).where(RecoveryStep.run_id == run_id, RecoveryStep.name == name)
        ).first()
        if step is None:
            raise AuditUnavailable(f"audit step {name!r} of run {run_id} not found")
        return step

    # --- reads ---------------------------------------------------------------------------------

    def run(self, run_id: str) -> RunRecord | None:
        with self._session() as session:
            row = session.scalars(
                select(RecoveryRun).options(selectinload(RecoveryRun.steps)).where(RecoveryRun.id == run_id)
            ).first()
            return run_record(row) if row else None

    def in_progress(self, limit: int = 1000) -> list[RunRecord]:
        """Runs still ``in_progress`` (never dry runs), oldest first (``ix_recovery_runs_in_progress``)."""
        query = (
            select(RecoveryRun)
            .options(selectinload(RecoveryRun.steps))
            .where(RecoveryRun.state == "in_progress")
            .order_by(RecoveryRun.started_at, RecoveryRun.id)
            .limit(limit)
        )
        with self._session() as session:
            return [run_record(r) for r in session.scalars(query)]

    def history(self, target: str | None = None, limit: int = 20) -> list[RunRecord]:
        """Most recent runs first."""
        query = select(RecoveryRun).options(selectinload(RecoveryRun.steps))
        if target:
            query = query.where(RecoveryRun.target == target)
        query = query.order_by(RecoveryRun.started_at.desc(), RecoveryRun.id).limit(limit)
        with self._session() as session:
            return [run_record(r) for r in session.scalars(query)]
