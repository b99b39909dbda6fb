"""tokens expire, can be revoked, and say when they were last used

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 19:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    # `onep up` used to mint a new admin token without revoking the old one: of the tokens
    # that share a project and a name, only the newest stays live.
    tokens = sa.table(
        "tokens",
        sa.column("id", sa.String),
        sa.column("project_id", sa.String),
        sa.column("name", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("revoked_at", sa.DateTime(timezone=True)),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(tokens.c.id, tokens.c.project_id, tokens.c.name).order_by(
            tokens.c.created_at.desc(), tokens.c.id.desc()
        )
    ).all()
    seen: set[tuple[object, object]] = set()
    stale: list[object] = []
    for token_id, project_id, name in rows:  # newest first: the first of each name stays
        if (project_id, name) in seen:
            stale.append(token_id)
        seen.add((project_id, name))
    if stale:
        conn.execute(tokens.update().where(tokens.c.id.in_(stale)).values(revoked_at=sa.func.now()))
    with op.batch_alter_table("tokens") as batch:
        batch.create_index(
            "uq_tokens_project_name_live",
            ["project_id", "name"],
            unique=True,
            sqlite_where=sa.text("revoked_at IS NULL"),
            postgresql_where=sa.text("revoked_at IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_index("uq_tokens_project_name_live")
        batch.drop_column("last_used_at")
        batch.drop_column("revoked_at")
        batch.drop_column("expires_at")
