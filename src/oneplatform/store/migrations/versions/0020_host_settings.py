"""a host's own settings (an SSH identity file, its host key), merged over its pool's

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-28 00:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("hosts", sa.Column("settings", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    # A plain ALTER TABLE (SQLite >= 3.35 has DROP COLUMN): a batch would copy the table,
    # which the usage triggers on instances (0010) refer to.
    op.drop_column("hosts", "settings")
