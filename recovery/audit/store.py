"""AuditStore: write-ahead audit of recovery runs and steps; read back as frozen records.

Works on any SQLAlchemy URL (SQLite by default, PostgreSQL in production). The schema is
created by Alembic migrations on first use; a process that finds the schema at head skips
Alembic entirely, which keeps read-only CLI commands fast.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, selectinload

from recovery.audit.models import RUN_STATES, RecoveryRun, RecoveryStep
from recovery.errors import RecoveryError
from recovery.redact import redact, redact_url

HEAD_REVISION = "0002"
MAX_MESSAGE = 2000
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class AuditUnavailable(RecoveryError):
    """The audit database cannot be reached or written; recoveries must not run unaudited."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite drops tzinfo; everything is stored in UTC, so naive values are UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _iso(value: datetime | None) -> str | None:
    value = _aware(value)
    return value.isoformat() if value is not None else None


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
        return {
            "name": self.name,
            "state": self.state,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "optional": self.optional,
            "duration_seconds": self.duration_seconds,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "detail": self.detail,
        }


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

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "workflow": self.workflow,
            "type": self.type,
            "state": self.state,
            "dry_run": self.dry_run,
            "requested_by": self.requested_by,
            "reason": self.reason,
            "detected_reason": self.detected_reason,
            "first_failure_at": _iso(self.first_failure_at),
            "detected_at": _iso(self.detected_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "duration_seconds": self.duration_seconds,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "flow_run_id": self.flow_run_id,
            "steps": [s.as_json() for s in self.steps],
        }


def _run_record(row: RecoveryRun) -> RunRecord:
    steps = tuple(
        StepRecord(
            s.name,
            s.state,
            s.attempts,
            s.max_attempts,
            s.optional,
            _aware(s.started_at),
            _aware(s.finished_at),
            s.duration_seconds,
            s.error_type,
            s.error_message,
            s.detail,
        )
        for s in row.steps
    )
    started = _aware(row.started_at)
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
        _aware(row.first_failure_at),
        _aware(row.detected_at),
        started,
        _aware(row.finished_at),
        row.duration_seconds,
        row.error_type,
        row.error_message,
        row.flow_run_id,
        steps,
    )


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers (history, stats) run while a monitor writes; busy_timeout makes two
    # concurrent writers wait for each other instead of failing with "database is locked".
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def get_engine(url: str) -> Engine:
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine(url, pool_pre_ping=True)
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _sqlite_pragmas)
            _engines[url] = engine
        return engine


def _at_head(engine: Engine) -> bool:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        return bool(conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD_REVISION)


# Alembic keeps its ``context``/``op`` proxies in module globals: two threads migrating at once
# corrupt each other, so one migration runs per process at a time.
_migrate_lock = threading.Lock()


@contextmanager
def _cross_process_lock(engine: Engine) -> Iterator[None]:
    """Serialise migrations across processes. SQLite DDL is not transactional enough to race."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        yield  # PostgreSQL serialises inside the transaction (advisory lock) instead
        return
    import fcntl

    with open(f"{database}.migrate-lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def migrate(engine: Engine) -> None:
    """Bring the schema to head with Alembic (skipped, without importing Alembic, at head)."""
    if _at_head(engine):
        return
    from alembic import command
    from alembic.config import Config

    with _migrate_lock, _cross_process_lock(engine):
        if _at_head(engine):  # another thread/process finished while we waited
            return
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Two processes migrating at once serialise here instead of racing on DDL.
                conn.execute(text("SELECT pg_advisory_xact_lock(7265441)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")


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
    ) -> str:
        """Write the run row and its planned steps before anything is touched.

        ``now`` (default: the current time) becomes ``started_at``; scripted timelines set it.
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
            started = _aware(step.started_at)
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
            row.duration_seconds = (now - _aware(row.started_at)).total_seconds()  # type: ignore[operator]
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
            return _run_record(row) if row else None

    def history(self, target: str | None = None, limit: int = 20) -> list[RunRecord]:
        """Most recent runs first."""
        query = select(RecoveryRun).options(selectinload(RecoveryRun.steps))
        if target:
            query = query.where(RecoveryRun.target == target)
        query = query.order_by(RecoveryRun.started_at.desc(), RecoveryRun.id).limit(limit)
        with self._session() as session:
            return [_run_record(r) for r in session.scalars(query)]
