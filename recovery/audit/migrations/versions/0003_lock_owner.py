"""lock owner of a run; index of the runs still in progress

Revision ID: 0003
Revises: 0002

``lock_owner`` is the token under which a run holds its target's recovery lock (the monitor's
token, or the run's own id). ``recovery reconcile`` (and every monitor cycle) compares it with
the lock's current holder: a row ``in_progress`` whose lock is gone or held by someone else
belongs to a run that died, and is finished as failed (``Orphaned``/``Crashed``). Rows written
before this revision have no owner; reconcile then only acts once the lock is free.

The partial index keeps that per-cycle lookup independent of the table's size: only the rows
still in progress are in it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

IN_PROGRESS = sa.text("state = 'in_progress'")


def upgrade() -> None:
    op.add_column("recovery_runs", sa.Column("lock_owner", sa.String(128)))
    op.create_index(
        "ix_recovery_runs_in_progress",
        "recovery_runs",
        ["started_at"],
        sqlite_where=IN_PROGRESS,
        postgresql_where=IN_PROGRESS,
    )


def downgrade() -> None:
    op.drop_index("ix_recovery_runs_in_progress", "recovery_runs")
    with op.batch_alter_table("recovery_runs") as batch:
        batch.drop_column("lock_owner")
