"""warm capacity: warm pools, warm instances, and an instance's own network group

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26 01:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN (no batch): on SQLite a batch would recreate the table and drop
    # the host-usage triggers of 0010.
    op.add_column("instances", sa.Column("network_group", sa.String(32), nullable=True))
    op.create_table(
        "warm_pools",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("flavor_id", sa.String(32), sa.ForeignKey("flavors.id"), nullable=False),
        sa.Column("datastore", sa.String(32), nullable=False),
        sa.Column("version", sa.String(16), nullable=False),
        sa.Column("size_gb", sa.Integer(), nullable=False),
        sa.Column("target", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("flavor_id", "datastore", "version", name="uq_warm_pools_flavor_id"),
    )
    op.create_table(
        "warm_instances",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("pool_id", sa.String(32), sa.ForeignKey("warm_pools.id"), nullable=False),
        sa.Column("instance_id", sa.String(32), sa.ForeignKey("instances.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=False),
        sa.Column("secret_enc", sa.Text(), nullable=False),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_warm_instances_pool_status", "warm_instances", ["pool_id", "status"])
    op.create_index("ix_warm_instances_instance_id", "warm_instances", ["instance_id"])


def downgrade() -> None:
    op.drop_index("ix_warm_instances_instance_id", "warm_instances")
    op.drop_index("ix_warm_instances_pool_status", "warm_instances")
    op.drop_table("warm_instances")
    op.drop_table("warm_pools")
    op.drop_column("instances", "network_group")
