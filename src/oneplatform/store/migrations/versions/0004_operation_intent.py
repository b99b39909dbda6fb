"""operation intent; one power-state vocabulary

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 18:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The kinds that existed before intents were recorded, by what they do to their resource.
_CREATE = ("instance.create", "instance.create.baremetal", "db.create", "image.build")
_CREATE_PREFIX = "node.enroll"
_DELETE = ("instance.delete", "instance.delete.baremetal", "db.delete")
# Nodes used the BMC's words for power; every resource now uses the compute power states.
_NODE_POWER = {
    "on": "running",
    "off": "stopped",
    "powering_on": "starting",
    "powering_off": "stopping",
}


def upgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.add_column(sa.Column("intent", sa.String(length=16), nullable=True))
    operations = sa.table(
        "operations", sa.column("kind", sa.String), sa.column("intent", sa.String)
    )
    op.execute(
        operations.update().values(
            intent=sa.case(
                (operations.c.kind.in_(_CREATE), "create"),
                (operations.c.kind.like(f"{_CREATE_PREFIX}%"), "create"),
                (operations.c.kind.in_(_DELETE), "delete"),
                else_="action",
            )
        )
    )
    with op.batch_alter_table("operations") as batch:
        batch.alter_column("intent", existing_type=sa.String(length=16), nullable=False)
    nodes = sa.table("nodes", sa.column("power_state", sa.String))
    for old, new in _NODE_POWER.items():
        op.execute(nodes.update().where(nodes.c.power_state == old).values(power_state=new))


def downgrade() -> None:
    nodes = sa.table("nodes", sa.column("power_state", sa.String))
    for old, new in _NODE_POWER.items():
        op.execute(nodes.update().where(nodes.c.power_state == new).values(power_state=old))
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("intent")
