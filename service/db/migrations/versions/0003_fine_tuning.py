"""Fine-tuning: uploaded dataset files, jobs (with their lease) and job events.

Revision ID: 0003_fine_tuning
Revises: 0002_usage
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_fine_tuning"
down_revision = "0002_usage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_files_tenant_id", "files", ["tenant_id"])
    op.create_table(
        "fine_tune_jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("base_model", sa.String(64), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("training_file", sa.String(40), nullable=False),
        sa.Column("validation_file", sa.String(40), nullable=True),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("suffix", sa.String(40), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("steps_done", sa.Integer(), nullable=False),
        sa.Column("steps_total", sa.Integer(), nullable=True),
        sa.Column("epochs_done", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("fine_tuned_model", sa.String(64), nullable=True, unique=True),
        sa.Column("error", sa.String(2000), nullable=True),
        sa.Column("device_seconds", sa.Float(), nullable=False),
        sa.Column("trained_samples", sa.BigInteger(), nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.UniqueConstraint("tenant_id", "idempotency_key", name="uq_fine_tune_jobs_idempotency"),
    )
    op.create_index("ix_fine_tune_jobs_tenant_id", "fine_tune_jobs", ["tenant_id"])
    op.create_index("ix_fine_tune_jobs_status", "fine_tune_jobs", ["status"])
    op.create_table(
        "fine_tune_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "job_id",
            sa.String(40),
            sa.ForeignKey("fine_tune_jobs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("message", sa.String(2000), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_fine_tune_events_job_id", "fine_tune_events", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_fine_tune_events_job_id", table_name="fine_tune_events")
    op.drop_table("fine_tune_events")
    op.drop_index("ix_fine_tune_jobs_status", table_name="fine_tune_jobs")
    op.drop_index("ix_fine_tune_jobs_tenant_id", table_name="fine_tune_jobs")
    op.drop_table("fine_tune_jobs")
    op.drop_index("ix_files_tenant_id", table_name="files")
    op.drop_table("files")
