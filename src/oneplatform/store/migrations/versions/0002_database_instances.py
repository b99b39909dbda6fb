"""database instances

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 21:19:22.795972
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "db_instances",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("datastore", sa.String(length=32), nullable=False),
        sa.Column("version", sa.String(length=16), nullable=False),
        sa.Column("flavor_id", sa.String(length=32), nullable=False),
        sa.Column("instance_id", sa.String(length=32), nullable=True),
        sa.Column("size_gb", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=False),
        sa.Column("health", sa.String(length=16), nullable=False),
        sa.Column("health_message", sa.Text(), nullable=False),
        sa.Column("health_checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("admin_username", sa.String(length=63), nullable=False),
        sa.Column("admin_password_enc", sa.Text(), nullable=False),
        sa.Column("admin_password_pending_enc", sa.Text(), nullable=True),
        sa.Column("agent_secret_enc", sa.Text(), nullable=False),
        sa.Column("pending_enc", sa.Text(), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["flavor_id"], ["flavors.id"], name=op.f("fk_db_instances_flavor_id_flavors")
        ),
        sa.ForeignKeyConstraint(
            ["instance_id"], ["instances.id"], name=op.f("fk_db_instances_instance_id_instances")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_db_instances_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_db_instances")),
    )
    with op.batch_alter_table("db_instances", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_db_instances_project_id"), ["project_id"], unique=False
        )
        batch_op.create_index(
            "uq_db_instances_project_name_live",
            ["project_id", "name"],
            unique=True,
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        )

    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("managed_by", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("bundle_enc", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("volumes", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )


def downgrade() -> None:

    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("volumes")
        batch_op.drop_column("bundle_enc")
        batch_op.drop_column("managed_by")

    with op.batch_alter_table("db_instances", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_db_instances_project_name_live",
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_db_instances_project_id"))

    op.drop_table("db_instances")
