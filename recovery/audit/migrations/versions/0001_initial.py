"""recovery runs and steps

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recovery_runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("target", sa.String(63), nullable=False),
        sa.Column("workflow", sa.String(64), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("dry_run", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("requested_by", sa.String(128)),
        sa.Column("reason", sa.Text),
        sa.Column("detected_reason", sa.Text),
        sa.Column("first_failure_at", sa.DateTime(timezone=True)),
        sa.Column("detected_at", sa.DateTime(timezone=True)),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("duration_seconds", sa.Float),
        sa.Column("error_type", sa.String(128)),
        sa.Column("error_message", sa.Text),
        sa.Column("flow_run_id", sa.String(36)),
    )
    op.create_index("ix_recovery_runs_target_started", "recovery_runs", ["target", "started_at"])
    op.create_index("ix_recovery_runs_started", "recovery_runs", ["started_at"])
    op.create_table(
        "recovery_steps",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "run_id",
            sa.String(36),
            sa.ForeignKey("recovery_runs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("optional", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer, nullable=False, server_default="1"),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("duration_seconds", sa.Float),
        sa.Column("error_type", sa.String(128)),
        sa.Column("error_message", sa.Text),
        sa.Column("detail", sa.JSON),
    )
    op.create_index("ix_recovery_steps_run_id", "recovery_steps", ["run_id"])
    op.create_index("uq_recovery_steps_run_position", "recovery_steps", ["run_id", "position"], unique=True)


def downgrade() -> None:
    op.drop_table("recovery_steps")
    op.drop_table("recovery_runs")
