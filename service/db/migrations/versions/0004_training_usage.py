"""Training usage: usage events and prices get a `kind` (inference | training), and a fine-tuning
job keeps the key that created it (its usage event is that key's).

Revision ID: 0004_training_usage
Revises: 0003_fine_tuning
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_training_usage"
down_revision = "0003_fine_tuning"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_events") as table:
        table.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="inference"))
    with op.batch_alter_table("prices") as table:
        table.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="inference"))
    with op.batch_alter_table("fine_tune_jobs") as table:
        table.add_column(sa.Column("key_id", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tune_jobs") as table:
        table.drop_column("key_id")
    with op.batch_alter_table("prices") as table:
        table.drop_column("kind")
    with op.batch_alter_table("usage_events") as table:
        table.drop_column("kind")
