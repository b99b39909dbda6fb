"""project quotas (an admin's limits per project; no row, or NULL: unlimited), and the
engine statistics the health checker last read of each database instance

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-27 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "project_quotas",
        sa.Column(
            "project_id",
            sa.String(32),
            sa.ForeignKey("projects.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("databases", sa.Integer(), nullable=True),
        sa.Column("vcpus", sa.Integer(), nullable=True),
        sa.Column("ram_mb", sa.Integer(), nullable=True),
        sa.Column("storage_gb", sa.Integer(), nullable=True),
        sa.Column("backups", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.add_column("db_instances", sa.Column("engine_stats", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("db_instances") as batch:
        batch.drop_column("engine_stats")
    op.drop_table("project_quotas")
