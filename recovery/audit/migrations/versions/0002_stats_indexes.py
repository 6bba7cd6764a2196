"""covering indexes for recovery stats; flow_run_id lookup

Revision ID: 0002
Revises: 0001

``recovery stats`` aggregates a window of runs per target/workflow (recovery/stats.py). With
these covering indexes, in (target, workflow, ...) order, SQLite answers every stats query from
an index alone without sorting, and PostgreSQL can use index-only scans: 100,000 runs in well
under a second (benchmarks/stats_bench.py). ``flow_run_id`` is how Prefect's run history is
matched to audit rows.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

STATS_COLUMNS = ["target", "workflow", "duration_seconds", "started_at", "state", "dry_run", "error_type"]
INCIDENT_COLUMNS = [
    "target",
    "workflow",
    "first_failure_at",
    "detected_at",
    "finished_at",
    "state",
    "started_at",
    "dry_run",
]
HAS_FIRST_FAILURE = sa.text("first_failure_at IS NOT NULL")


def upgrade() -> None:
    op.create_index("ix_recovery_runs_stats", "recovery_runs", STATS_COLUMNS)
    op.create_index(
        "ix_recovery_runs_incidents",
        "recovery_runs",
        INCIDENT_COLUMNS,
        sqlite_where=HAS_FIRST_FAILURE,
        postgresql_where=HAS_FIRST_FAILURE,
    )
    op.create_index("ix_recovery_runs_flow_run_id", "recovery_runs", ["flow_run_id"])


def downgrade() -> None:
    op.drop_index("ix_recovery_runs_flow_run_id", "recovery_runs")
    op.drop_index("ix_recovery_runs_incidents", "recovery_runs")
    op.drop_index("ix_recovery_runs_stats", "recovery_runs")
