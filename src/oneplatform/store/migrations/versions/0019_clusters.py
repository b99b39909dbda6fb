"""clusters: container pools composed from the platform's own VMs, and pools, hosts and
flavors that belong to one project

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-28 00:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # hosts: a plain column (a batch copy of the table would drop its triggers and its
    # expression index, migration 0010); its pool's owner, copied.
    op.add_column("hosts", sa.Column("project_id", sa.String(32), nullable=True))
    for table in ("pools", "flavors"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("project_id", sa.String(32), nullable=True))
            batch.create_foreign_key(
                op.f(f"fk_{table}_project_id_projects"), "projects", ["project_id"], ["id"]
            )
    with op.batch_alter_table("flavors") as batch:
        batch.add_column(sa.Column("pool_id", sa.String(32), nullable=True))
        batch.create_foreign_key(op.f("fk_flavors_pool_id_pools"), "pools", ["pool_id"], ["id"])
    op.create_table(
        "clusters",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "project_id",
            sa.String(32),
            sa.ForeignKey("projects.id", name=op.f("fk_clusters_project_id_projects")),
            nullable=False,
        ),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=False),
        sa.Column(
            "node_flavor_id",
            sa.String(32),
            sa.ForeignKey("flavors.id", name=op.f("fk_clusters_node_flavor_id_flavors")),
            nullable=False,
        ),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column(
            "pool_id",
            sa.String(32),
            sa.ForeignKey("pools.id", name=op.f("fk_clusters_pool_id_pools")),
            nullable=True,
        ),
        sa.Column(
            "flavor_id",
            sa.String(32),
            sa.ForeignKey("flavors.id", name=op.f("fk_clusters_flavor_id_flavors")),
            nullable=True,
        ),
        sa.Column("public_key", sa.Text(), nullable=True),
        sa.Column("key_enc", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(op.f("ix_clusters_project_id"), "clusters", ["project_id"])
    op.create_index(
        "uq_clusters_name_live",
        "clusters",
        ["name"],
        unique=True,
        sqlite_where=sa.text("deleted_at IS NULL"),
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_table(
        "cluster_nodes",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "cluster_id",
            sa.String(32),
            sa.ForeignKey("clusters.id", name=op.f("fk_cluster_nodes_cluster_id_clusters")),
            nullable=False,
        ),
        sa.Column(
            "instance_id",
            sa.String(32),
            sa.ForeignKey("instances.id", name=op.f("fk_cluster_nodes_instance_id_instances")),
            nullable=False,
        ),
        sa.Column(
            "host_id",
            sa.String(32),
            sa.ForeignKey("hosts.id", name=op.f("fk_cluster_nodes_host_id_hosts")),
            nullable=True,
        ),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("ssh_port", sa.Integer(), nullable=True),
        sa.Column("port_range_start", sa.Integer(), nullable=True),
        sa.Column("port_range_end", sa.Integer(), nullable=True),
        sa.Column("host_key", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(op.f("ix_cluster_nodes_cluster_id"), "cluster_nodes", ["cluster_id"])


def downgrade() -> None:
    op.drop_index("ix_cluster_nodes_cluster_id", table_name="cluster_nodes")
    op.drop_table("cluster_nodes")
    op.drop_index("uq_clusters_name_live", table_name="clusters")
    op.drop_index("ix_clusters_project_id", table_name="clusters")
    op.drop_table("clusters")
    with op.batch_alter_table("flavors") as batch:
        batch.drop_constraint("fk_flavors_pool_id_pools", type_="foreignkey")
        batch.drop_column("pool_id")
    op.drop_column("hosts", "project_id")
    for table in ("pools", "flavors"):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"fk_{table}_project_id_projects", type_="foreignkey")
            batch.drop_column("project_id")
