"""Fine-tuning jobs get a priority: the queue is FIFO per priority (high 1, normal 0, low -1).

Revision ID: 0005_job_priority
Revises: 0004_training_usage
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_job_priority"
down_revision = "0004_training_usage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tune_jobs") as table:
        table.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_fine_tune_jobs_queue", "fine_tune_jobs", ["status", "priority", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_fine_tune_jobs_queue", table_name="fine_tune_jobs")
    with op.batch_alter_table("fine_tune_jobs") as table:
        table.drop_column("priority")
