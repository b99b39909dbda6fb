"""configuration groups: engine parameters per project, attached to database instances

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-27 17:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "configuration_groups",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("project_id", sa.String(32), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("datastore", sa.String(32), nullable=False),
        sa.Column("version", sa.String(16), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("project_id", "name", name="uq_configuration_groups_name"),
    )
    op.create_index("ix_configuration_groups_project_id", "configuration_groups", ["project_id"])
    with op.batch_alter_table("db_instances") as batch:
        batch.add_column(sa.Column("configuration_id", sa.String(32), nullable=True))
        batch.add_column(
            sa.Column("restart_required", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.create_foreign_key(
            "fk_db_instances_configuration_id_configuration_groups",
            "configuration_groups",
            ["configuration_id"],
            ["id"],
        )
        batch.create_index("ix_db_instances_configuration_id", ["configuration_id"])


def downgrade() -> None:
    with op.batch_alter_table("db_instances") as batch:
        batch.drop_index("ix_db_instances_configuration_id")
        batch.drop_constraint(
            "fk_db_instances_configuration_id_configuration_groups", type_="foreignkey"
        )
        batch.drop_column("restart_required")
        batch.drop_column("configuration_id")
    op.drop_index("ix_configuration_groups_project_id", "configuration_groups")
    op.drop_table("configuration_groups")
