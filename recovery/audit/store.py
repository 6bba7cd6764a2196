"""AuditStore: write-ahead audit of recovery runs and steps; read back as frozen records.

Works on any SQLAlchemy URL (SQLite by default, PostgreSQL in production). The schema is
created by Alembic migrations on first use; a process that finds the schema at head skips
Alembic entirely, which keeps read-only CLI commands fast.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload

from recovery.audit.db import DEFAULT_TIMEOUT_SECONDS, get_engine, migrate
from recovery.audit.deadline import deadline
from recovery.audit.fold import apply_ops
from recovery.audit.models import RecoveryRun, RecoveryStep
from recovery.audit.ops import (
    AuditOp,
    finish_run_op,
    set_flow_run_id_op,
    start_run_op,
    step_attempt_op,
    step_finished_op,
)
from recovery.audit.records import (
    AuditRejected,
    AuditUnavailable,
    PlannedStep,
    RunRecord,
    aware,
    error_text,
    run_record,
    utcnow,
)
from recovery.redact import redact_url

__all__ = ["AuditStore", "AuditUnavailable", "PlannedStep", "RunRecord", "error_text"]


PRUNE_BATCH = 1000  # runs deleted per transaction by prune()


class AuditStore:
    """Write-ahead audit trail. Every method raises ``AuditUnavailable`` (redacted) on DB errors:
    ``AuditRejected`` when the database answered and refused, the base class when it could not
    be reached or did not answer within ``timeout_seconds``.

    ``lazy``: connect and migrate on first use instead of now (the durable facade is built
    while the database may be down).
    """

    def __init__(
        self, url: str, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS, *, lazy: bool = False
    ) -> None:
        self.description = redact_url(url)
        self.timeout_seconds = timeout_seconds
        self.engine = get_engine(url, timeout_seconds)
        self._migrated = False
        if not lazy:
            self._ensure_schema()

    def _failure(self, exc: SQLAlchemyError, expired: bool) -> AuditUnavailable:
        if expired:
            return AuditUnavailable(
                f"audit store {self.description}: no answer within {self.timeout_seconds:g}s"
            )
        kind = AuditRejected if isinstance(exc, IntegrityError | DataError) else AuditUnavailable
        return kind(f"audit store {self.description}: {error_text(exc)}")

    def _ensure_schema(self) -> None:
        if self._migrated:
            return
        with deadline(self.engine, self.timeout_seconds) as bound:
            try:
                migrate(self.engine)
            except SQLAlchemyError as exc:
                raise self._failure(exc, bound.expired) from None
        self._migrated = True

    @contextmanager
    def _session(self) -> Iterator[Session]:
        self._ensure_schema()
        with deadline(self.engine, self.timeout_seconds) as bound:
            try:
                with Session(self.engine, expire_on_commit=False) as session, session.begin():
                    yield session
            except SQLAlchemyError as exc:
                raise self._failure(exc, bound.expired) from None

    def catch_up(self) -> None:
        """Bring the store up to date before a read (the durable facade replays its spool)."""

    def pending(self) -> int:
        """Writes not in the store yet (the durable facade: records in its spool)."""
        return 0

    def _write(self, op: AuditOp) -> None:
        """Apply one write op now (the durable facade overrides this to spool when down)."""
        with self._session() as session:
            apply_ops(session, [op])

    # --- writes: each builds its op (timestamps captured here) and hands it to _write -----------

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
        refused_because: str | None = None,
        rung: int | None = None,
    ) -> str:
        """Write the run row and its planned steps before anything is touched.

        ``now`` (default: the current time) becomes ``started_at``; scripted timelines set it.
        ``lock_owner``: the token the run holds its target's lock under (``reconcile``).
        """
        op = start_run_op(
            run_id=run_id or str(uuid.uuid4()),
            now=now or utcnow(),
            target=target,
            workflow=workflow,
            run_type=run_type,
            steps=steps,
            requested_by=requested_by,
            reason=reason,
            detected_reason=detected_reason,
            first_failure_at=first_failure_at,
            detected_at=detected_at,
            dry_run=dry_run,
            flow_run_id=flow_run_id,
            state=state,
            lock_owner=lock_owner,
            refused_because=refused_because,
            rung=rung,
        )
        self._write(op)
        return op.run_id

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
        rung: int | None = None,
        first_failure_at: datetime | None = None,
    ) -> str:
        """Record a recovery that was not started (lock held, budget exhausted...).

        ``reason`` is why it was refused (stored as the error); ``request_reason`` is the
        requester's own reason for asking.
        """
        return self.start_run(
            target=target,
            workflow=workflow,
            run_type=run_type,
            steps=(),
            requested_by=requested_by,
            reason=request_reason,
            flow_run_id=flow_run_id,
            state="refused",
            run_id=run_id,
            now=now,
            refused_because=reason,
            rung=rung,
            first_failure_at=first_failure_at,  # an automatic run's incident (events: once per incident)
        )

    def step_attempt(self, run_id: str, name: str, attempt: int) -> None:
        """Mark a step running and count the attempt (called at the start of every attempt)."""
        self._write(step_attempt_op(run_id, name, attempt, utcnow()))

    def step_finished(
        self,
        run_id: str,
        name: str,
        state: str,
        error: BaseException | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self._write(step_finished_op(run_id, name, state, error, detail, utcnow()))

    def finish_run(
        self,
        run_id: str,
        state: str,
        error: BaseException | str | None = None,
        error_type: str | None = None,
        now: datetime | None = None,
    ) -> None:
        """Set the final state; ``now`` (default: the current time) becomes ``finished_at``."""
        self._write(finish_run_op(run_id, state, error, error_type, now or utcnow()))

    def orphan_run(
        self, run_id: str, error_type: str, message: str, now: datetime | None = None, state: str = "failed"
    ) -> bool:
        """Finish a run whose process died (or that an emergency took over: ``state``
        ``cancelled``): ``state`` with ``error_type``, its running step ``failed``, steps never
        started ``skipped``. Only a row still ``in_progress`` changes, so of two reconcilers (or
        a reconciler and the run's own late ``finish``) one wins; True if this call finished it."""
        now = now or utcnow()
        message = error_text(message) or ""
        with self._session() as session:
            # The conditional UPDATE comes first: it takes the row's write lock before reading.
            claimed = session.execute(
                update(RecoveryRun)
                .where(RecoveryRun.id == run_id, RecoveryRun.state == "in_progress")
                .values(state=state, finished_at=now, error_type=error_type, error_message=message)
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
        self._write(set_flow_run_id_op(run_id, flow_run_id, utcnow()))

    # --- retention -----------------------------------------------------------------------------

    def prune(self, before: datetime, dry_run: bool = False, batch: int = PRUNE_BATCH) -> int:
        """Delete the finished runs (and their steps) that started before ``before``; how many.

        A run still ``in_progress`` stays whatever its age: reconcile finishes it first, and its
        row is what proves the lock it may hold. Batches of ``batch`` runs, each its own
        transaction under the statement deadline, so a years-long backlog never holds one long
        lock on the table live recoveries write to. ``dry_run``: only count."""
        # SQLite stores naive UTC text: the bound must be UTC for the comparison to hold.
        old = (RecoveryRun.started_at < before.astimezone(UTC), RecoveryRun.state != "in_progress")
        if dry_run:
            with self._session() as session:
                return int(session.scalar(select(func.count()).select_from(RecoveryRun).where(*old)) or 0)
        total = 0
        while True:
            with self._session() as session:
                ids = list(session.scalars(select(RecoveryRun.id).where(*old).limit(batch)))
                if ids:  # steps first: SQLite enforces no ON DELETE CASCADE without a pragma
                    session.execute(delete(RecoveryStep).where(RecoveryStep.run_id.in_(ids)))
                    session.execute(delete(RecoveryRun).where(RecoveryRun.id.in_(ids)))
            total += len(ids)
            if len(ids) < batch:
                return total

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

    def incident_runs(self, target: str, first_failure_at: datetime, limit: int = 200) -> list[RunRecord]:
        """Runs of one incident: ``target``'s runs whose ``first_failure_at`` is this one (to the
        millisecond: the epoch seconds travel through Redis as text), oldest first
        (``ix_recovery_runs_incidents``). Events are reported once per incident from these."""
        slack = timedelta(milliseconds=1)
        query = (
            select(RecoveryRun)
            .options(selectinload(RecoveryRun.steps))
            .where(
                RecoveryRun.target == target,
                RecoveryRun.first_failure_at >= first_failure_at - slack,
                RecoveryRun.first_failure_at <= first_failure_at + slack,
            )
            .order_by(RecoveryRun.started_at, RecoveryRun.id)
            .limit(limit)
        )
        with self._session() as session:
            return [run_record(r) for r in session.scalars(query)]
