"""Tenants get a weight: their share of a contended model's batches (fair queueing), default 1.

Revision ID: 0006_tenant_weight
Revises: 0005_job_priority
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_tenant_weight"
down_revision = "0005_job_priority"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as table:
        table.add_column(sa.Column("weight", sa.Float(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as table:
        table.drop_column("weight")
