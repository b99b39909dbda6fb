"""backups: each database instance's repository, its backups and its schedule

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26 04:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_REPO_COLUMNS = (
    ("repo_bucket", sa.String(63)),
    ("repo_access_key", sa.String(64)),
    ("repo_secret_enc", sa.Text()),
    ("repo_cipher_enc", sa.Text()),
    ("archived_until", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    for name, kind in _REPO_COLUMNS:
        op.add_column("db_instances", sa.Column(name, kind, nullable=True))
    op.create_table(
        "backups",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("project_id", sa.String(32), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column(
            "db_instance_id", sa.String(32), sa.ForeignKey("db_instances.id"), nullable=False
        ),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("type", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=False),
        sa.Column("scheduled", sa.Boolean(), nullable=False),
        sa.Column("label", sa.String(64), nullable=True),
        sa.Column("parent_id", sa.String(32), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("repo_size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("wal_start", sa.String(32), nullable=True),
        sa.Column("wal_stop", sa.String(32), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_backups_project_id", "backups", ["project_id"])
    op.create_index("ix_backups_db_instance_id", "backups", ["db_instance_id"])
    op.create_index(
        "uq_backups_project_name_live",
        "backups",
        ["project_id", "name"],
        unique=True,
        sqlite_where=sa.text("deleted_at IS NULL"),
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_table(
        "backup_schedules",
        sa.Column(
            "db_instance_id", sa.String(32), sa.ForeignKey("db_instances.id"), primary_key=True
        ),
        sa.Column("project_id", sa.String(32), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("every_seconds", sa.Integer(), nullable=False),
        sa.Column("full_every_seconds", sa.Integer(), nullable=True),
        sa.Column("keep_days", sa.Float(), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_full_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_backup_schedules_project_id", "backup_schedules", ["project_id"])
    op.create_index("ix_backup_schedules_next_run_at", "backup_schedules", ["next_run_at"])


def downgrade() -> None:
    op.drop_table("backup_schedules")
    op.drop_index("uq_backups_project_name_live", "backups")
    op.drop_table("backups")
    for name, _kind in reversed(_REPO_COLUMNS):
        op.drop_column("db_instances", name)
