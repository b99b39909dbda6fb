"""deploy tokens serve one operation's ramdisk run, and its bundle once

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 19:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deploy_tokens") as batch:
        batch.add_column(sa.Column("operation_id", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("bundle_served_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index(batch.f("ix_deploy_tokens_operation_id"), ["operation_id"])
    # Tokens of runs from before are bound to nothing: close them.
    op.execute("UPDATE deploy_tokens SET status = 'closed' WHERE status NOT IN ('done')")


def downgrade() -> None:
    with op.batch_alter_table("deploy_tokens") as batch:
        batch.drop_index(batch.f("ix_deploy_tokens_operation_id"))
        batch.drop_column("bundle_served_at")
        batch.drop_column("operation_id")
