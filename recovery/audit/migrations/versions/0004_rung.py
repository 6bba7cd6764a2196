"""escalation ladder rung of a run

Revision ID: 0004
Revises: 0003

``rung`` is the 1-based position, in its target's ``escalation`` ladder, of the workflow an
automatic run executed (or was refused for); NULL for a run that is not a ladder rung (manual
runs, targets without a ladder, rows written before this revision).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("recovery_runs", sa.Column("rung", sa.Integer()))


def downgrade() -> None:
    with op.batch_alter_table("recovery_runs") as batch:
        batch.drop_column("rung")
