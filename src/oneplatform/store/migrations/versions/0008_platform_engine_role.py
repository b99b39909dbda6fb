"""the platform's own engine role, so the tenant's admin need not be a superuser

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25 19:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("db_instances") as batch:
        batch.add_column(sa.Column("platform_password_enc", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("db_instances") as batch:
        batch.drop_column("platform_password_enc")
