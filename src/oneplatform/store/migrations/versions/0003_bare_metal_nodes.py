"""bare-metal nodes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 22:09:07.689220
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "nodes",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("pool_id", sa.String(length=32), nullable=False),
        sa.Column("host_id", sa.String(length=32), nullable=True),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("target_state", sa.String(length=24), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("power_state", sa.String(length=16), nullable=False),
        sa.Column("bmc_protocol", sa.String(length=16), nullable=False),
        sa.Column("bmc_address", sa.String(length=255), nullable=False),
        sa.Column("bmc_system_id", sa.String(length=255), nullable=False),
        sa.Column("bmc_username", sa.String(length=63), nullable=False),
        sa.Column("bmc_password_enc", sa.Text(), nullable=False),
        sa.Column("inventory", sa.JSON(), nullable=False),
        sa.Column("port_map", sa.JSON(), nullable=False),
        sa.Column("instance_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name=op.f("fk_nodes_host_id_hosts")),
        sa.ForeignKeyConstraint(
            ["instance_id"], ["instances.id"], name=op.f("fk_nodes_instance_id_instances")
        ),
        sa.ForeignKeyConstraint(["pool_id"], ["pools.id"], name=op.f("fk_nodes_pool_id_pools")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nodes")),
        sa.UniqueConstraint("name", name=op.f("uq_nodes_name")),
    )
    op.create_table(
        "deploy_tokens",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("token_enc", sa.Text(), nullable=False),
        sa.Column("node_id", sa.String(length=32), nullable=False),
        sa.Column("instance_id", sa.String(length=32), nullable=True),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("image_name", sa.String(length=63), nullable=True),
        sa.Column("bundle_enc", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id"], ["instances.id"], name=op.f("fk_deploy_tokens_instance_id_instances")
        ),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_deploy_tokens_node_id_nodes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deploy_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_deploy_tokens_token_hash")),
    )
    with op.batch_alter_table("deploy_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deploy_tokens_node_id"), ["node_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("deploy_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deploy_tokens_node_id"))

    op.drop_table("deploy_tokens")
    op.drop_table("nodes")
