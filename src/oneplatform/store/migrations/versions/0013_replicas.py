"""replicas: database members (primary, replicas), stable endpoints, replication role

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-26 10:50:00
"""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("db_instances") as batch:
        batch.add_column(sa.Column("endpoint_address", sa.String(64), nullable=True))
        batch.add_column(sa.Column("rw_port", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("ro_port", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("repl_password_enc", sa.Text(), nullable=True))
        batch.create_unique_constraint("uq_db_instances_rw_port", ["rw_port"])
        batch.create_unique_constraint("uq_db_instances_ro_port", ["ro_port"])
    members = op.create_table(
        "db_members",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("db_id", sa.String(32), sa.ForeignKey("db_instances.id"), nullable=False),
        sa.Column("project_id", sa.String(32), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("instance_id", sa.String(32), sa.ForeignKey("instances.id"), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_db_members_db_id", "db_members", ["db_id"])
    op.create_index(
        "uq_db_members_project_name_live",
        "db_members",
        ["project_id", "name"],
        unique=True,
        sqlite_where=sa.text("deleted_at IS NULL"),
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    # Every live database instance with a compute instance is a group of one: its primary.
    rows = op.get_bind().execute(
        sa.text(
            "SELECT id, project_id, name, instance_id, status FROM db_instances "
            "WHERE deleted_at IS NULL AND instance_id IS NOT NULL"
        )
    )
    now = dt.datetime.now(dt.UTC)
    op.bulk_insert(
        members,
        [
            {
                "id": uuid.uuid4().hex,
                "db_id": db_id,
                "project_id": project_id,
                "name": name,
                "instance_id": instance_id,
                "role": "primary",
                "status": "ACTIVE" if status == "ACTIVE" else "BUILD",
                "status_message": "",
                "created_at": now,
                "updated_at": now,
            }
            for db_id, project_id, name, instance_id, status in rows
        ],
    )


def downgrade() -> None:
    op.drop_index("uq_db_members_project_name_live", table_name="db_members")
    op.drop_index("ix_db_members_db_id", table_name="db_members")
    op.drop_table("db_members")
    with op.batch_alter_table("db_instances") as batch:
        batch.drop_constraint("uq_db_instances_ro_port", type_="unique")
        batch.drop_constraint("uq_db_instances_rw_port", type_="unique")
        batch.drop_column("repl_password_enc")
        batch.drop_column("ro_port")
        batch.drop_column("rw_port")
        batch.drop_column("endpoint_address")
