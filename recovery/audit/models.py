"""SQLAlchemy 2 models of the audit trail (schema owned by the Alembic migrations beside this).

A run row is written *before* the first action (state ``in_progress``, every planned step
``pending``) and updated after each step, so a crash leaves a truthful partial record.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from recovery.enums import RunState, RunType, StepState

RUN_TYPES = tuple(RunType)
RUN_STATES = tuple(RunState)
STEP_STATES = tuple(StepState)


class Base(DeclarativeBase):
    pass


class RecoveryRun(Base):
    __tablename__ = "recovery_runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    target: Mapped[str] = mapped_column(String(63))
    workflow: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    requested_by: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    detected_reason: Mapped[str | None] = mapped_column(Text)
    first_failure_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    detected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    error_type: Mapped[str | None] = mapped_column(String(128))
    error_message: Mapped[str | None] = mapped_column(Text)
    flow_run_id: Mapped[str | None] = mapped_column(String(36))
    # Revision 0003: the token the run holds its target's lock under (reconcile compares it).
    lock_owner: Mapped[str | None] = mapped_column(String(128))
    # Revision 0004: the escalation ladder's rung (1-based) this run was; NULL: not a ladder run.
    rung: Mapped[int | None] = mapped_column(Integer)

    steps: Mapped[list[RecoveryStep]] = relationship(
        back_populates="run", order_by="RecoveryStep.position", cascade="all, delete-orphan"
    )

    __table_args__ = (
        Index("ix_recovery_runs_target_started", "target", "started_at"),
        Index("ix_recovery_runs_started", "started_at"),
        # Revision 0002: covering indexes of recovery/stats.py, and Prefect flow run lookups.
        Index(
            "ix_recovery_runs_stats",
            "target",
            "workflow",
            "duration_seconds",
            "started_at",
            "state",
            "dry_run",
            "error_type",
        ),
        Index(
            "ix_recovery_runs_incidents",
            "target",
            "workflow",
            "first_failure_at",
            "detected_at",
            "finished_at",
            "state",
            "started_at",
            "dry_run",
            sqlite_where=text("first_failure_at IS NOT NULL"),
            postgresql_where=text("first_failure_at IS NOT NULL"),
        ),
        Index("ix_recovery_runs_flow_run_id", "flow_run_id"),
        # Revision 0003: the runs still in progress (reconcile looks them up every monitor cycle).
        Index(
            "ix_recovery_runs_in_progress",
            "started_at",
            sqlite_where=text("state = 'in_progress'"),
            postgresql_where=text("state = 'in_progress'"),
        ),
    )


class RecoveryStep(Base):
    __tablename__ = "recovery_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("recovery_runs.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    optional: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    error_type: Mapped[str | None] = mapped_column(String(128))
    error_message: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    run: Mapped[RecoveryRun] = relationship(back_populates="steps")

    __table_args__ = (Index("uq_recovery_steps_run_position", "run_id", "position", unique=True),)
