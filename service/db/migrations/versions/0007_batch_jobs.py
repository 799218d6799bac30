"""Asynchronous batch jobs: a file of inputs run through a model in the `batch` service class.

Revision ID: 0007_batch_jobs
Revises: 0006_tenant_weight
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_batch_jobs"
down_revision = "0006_tenant_weight"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batch_jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("key_id", sa.String(40), nullable=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("input_file", sa.String(40), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("results_bytes", sa.BigInteger(), nullable=False),
        sa.Column("compute_us", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.String(2000), nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_batch_jobs_tenant_id", "batch_jobs", ["tenant_id"])
    op.create_index("ix_batch_jobs_queue", "batch_jobs", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_batch_jobs_queue", table_name="batch_jobs")
    op.drop_index("ix_batch_jobs_tenant_id", table_name="batch_jobs")
    op.drop_table("batch_jobs")
