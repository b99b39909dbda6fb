"""storage growth: the data filesystem's usage the guest agent last reported, auto-growth cap

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-27 17:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("db_instances") as batch:
        batch.add_column(sa.Column("storage_total_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("storage_used_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("storage_free_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("storage_checked_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("autogrow_max_gb", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("db_instances") as batch:
        batch.drop_column("autogrow_max_gb")
        batch.drop_column("storage_checked_at")
        batch.drop_column("storage_free_bytes")
        batch.drop_column("storage_used_bytes")
        batch.drop_column("storage_total_bytes")
