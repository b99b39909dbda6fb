"""ports belong to a machine and address, not to a host row

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 19:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _machine(uri: str) -> str:
    """As compute.ports.machine_of was when this migration was written."""
    from urllib.parse import urlsplit

    host = (urlsplit(uri).hostname or "").lower()
    return "local" if host in ("", "localhost", "127.0.0.1", "::1") else host


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(
            sa.Column("machine", sa.String(length=255), nullable=False, server_default="local")
        )
    hosts = sa.table(
        "hosts",
        sa.column("id", sa.String),
        sa.column("uri", sa.String),
        sa.column("machine", sa.String),
    )
    conn = op.get_bind()
    for host_id, uri in conn.execute(sa.select(hosts.c.id, hosts.c.uri)).all():
        conn.execute(hosts.update().where(hosts.c.id == host_id).values(machine=_machine(str(uri))))
    with op.batch_alter_table("port_allocations") as batch:
        batch.add_column(sa.Column("machine", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("address", sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE port_allocations SET "
        "machine = (SELECT machine FROM hosts WHERE hosts.id = port_allocations.host_id), "
        "address = (SELECT bind_address FROM hosts WHERE hosts.id = port_allocations.host_id)"
    )
    with op.batch_alter_table("port_allocations") as batch:
        batch.alter_column("machine", existing_type=sa.String(length=255), nullable=False)
        batch.alter_column("address", existing_type=sa.String(length=64), nullable=False)
        batch.drop_constraint("uq_port_allocations_host_id", type_="unique")
        batch.create_unique_constraint(
            "uq_port_allocations_port", ["machine", "address", "host_port"]
        )
    with op.batch_alter_table("hosts") as batch:
        batch.alter_column("machine", existing_type=sa.String(length=255), server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("port_allocations") as batch:
        batch.drop_constraint("uq_port_allocations_port", type_="unique")
        batch.create_unique_constraint("uq_port_allocations_host_id", ["host_id", "host_port"])
        batch.drop_column("address")
        batch.drop_column("machine")
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("machine")
