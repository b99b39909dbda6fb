"""hosts: failure domains (zone, rack), the capacity in use kept by triggers, the weigher index

The scheduler reads what a host's live instances use from the host's own row
(``used_vcpus``, ``used_ram_mb``, ``used_disk_gb``, ``used_instances``) instead of summing the
instances table on every placement. Triggers on ``instances`` keep those columns equal to the
sums in the same transaction as every insert, delete and change of an instance's host,
size or ``deleted_at``, whatever code makes it; a unit test holds them equal after random
changes on both backends.

A host also gets its pool's ``compute_type`` (a pool's never changes), so that one index
holds each compute type's hosts in the weighers' order.

Note for later migrations: on SQLite, ``batch_alter_table("instances")`` recreates the table
and so drops these triggers; such a migration must create them again.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25 22:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

WEIGHER_INDEX = "ix_hosts_weigher_order"
WEIGHER_ORDER = (
    "compute_type, (ram_mb * ram_allocation_ratio - used_ram_mb) DESC, "
    "(vcpus * cpu_allocation_ratio - used_vcpus) DESC, id"
)
USED = ("used_vcpus", "used_ram_mb", "used_disk_gb", "used_instances")
# What one live instance adds to its host's used_* columns.
SOURCE = ("vcpus", "ram_mb", "disk_gb", "1")


def _set(sign: str, row: str) -> str:
    return ", ".join(
        f"{used} = {used} {sign} {src if src == '1' else f'{row}.{src}'}"
        for used, src in zip(USED, SOURCE, strict=True)
    )


POSTGRES = f"""
CREATE FUNCTION onep_host_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP <> 'INSERT' THEN
    IF OLD.host_id IS NOT NULL AND OLD.deleted_at IS NULL THEN
      UPDATE hosts SET {_set("-", "OLD")} WHERE id = OLD.host_id;
    END IF;
  END IF;
  IF TG_OP <> 'DELETE' THEN
    IF NEW.host_id IS NOT NULL AND NEW.deleted_at IS NULL THEN
      UPDATE hosts SET {_set("+", "NEW")} WHERE id = NEW.host_id;
    END IF;
  END IF;
  RETURN NULL;
END
$$;
CREATE TRIGGER onep_host_usage
  AFTER INSERT OR DELETE OR UPDATE OF host_id, deleted_at, vcpus, ram_mb, disk_gb
  ON instances FOR EACH ROW EXECUTE FUNCTION onep_host_usage();
"""

SQLITE = (
    f"""CREATE TRIGGER onep_host_usage_insert AFTER INSERT ON instances
WHEN NEW.host_id IS NOT NULL AND NEW.deleted_at IS NULL
BEGIN UPDATE hosts SET {_set("+", "NEW")} WHERE id = NEW.host_id; END""",
    f"""CREATE TRIGGER onep_host_usage_delete AFTER DELETE ON instances
WHEN OLD.host_id IS NOT NULL AND OLD.deleted_at IS NULL
BEGIN UPDATE hosts SET {_set("-", "OLD")} WHERE id = OLD.host_id; END""",
    f"""CREATE TRIGGER onep_host_usage_update
AFTER UPDATE OF host_id, deleted_at, vcpus, ram_mb, disk_gb ON instances
BEGIN
  UPDATE hosts SET {_set("-", "OLD")} WHERE id = OLD.host_id AND OLD.deleted_at IS NULL;
  UPDATE hosts SET {_set("+", "NEW")} WHERE id = NEW.host_id AND NEW.deleted_at IS NULL;
END""",
)


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("compute_type", sa.String(16), nullable=True))
        batch.add_column(sa.Column("zone", sa.String(63), nullable=False, server_default=""))
        batch.add_column(sa.Column("rack", sa.String(63), nullable=False, server_default=""))
        for used in USED:
            batch.add_column(sa.Column(used, sa.Integer(), nullable=False, server_default="0"))
    sums = ", ".join(
        f"{used} = (SELECT COALESCE(SUM({src if src == '1' else 'i.' + src}), 0) FROM instances i"
        " WHERE i.host_id = hosts.id AND i.deleted_at IS NULL)"
        for used, src in zip(USED, SOURCE, strict=True)
    )
    op.execute(f"UPDATE hosts SET {sums}")
    op.execute(
        "UPDATE hosts SET compute_type = (SELECT compute_type FROM pools WHERE pools.id = "
        "hosts.pool_id)"
    )
    with op.batch_alter_table("hosts") as batch:
        batch.alter_column("compute_type", existing_type=sa.String(16), nullable=False)
    # The scheduler's weigher order (scheduler.FREE_RAM, FREE_VCPUS, id): a placement reads
    # the best few hosts off this index instead of sorting every host.
    op.create_index(WEIGHER_INDEX, "hosts", [sa.text(WEIGHER_ORDER)])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRES)
    else:
        for statement in SQLITE:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS onep_host_usage ON instances")
        op.execute("DROP FUNCTION IF EXISTS onep_host_usage()")
    else:
        for name in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS onep_host_usage_{name}")
    op.drop_index(WEIGHER_INDEX, "hosts")
    with op.batch_alter_table("hosts") as batch:
        for column in (*reversed(USED), "rack", "zone", "compute_type"):
            batch.drop_column(column)
