"""SQLAlchemy models. Every schema change comes with an Alembic migration."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC on the way out, whatever the backend stores."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Timestamps:
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Project(Timestamps, Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63), unique=True)


class ProjectQuota(Timestamps, Base):
    """An admin's limits for one project; NULL (or no row) is unlimited. What counts is in
    oneplatform.quotas."""

    __tablename__ = "project_quotas"
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    databases: Mapped[int | None] = mapped_column(Integer, default=None)
    vcpus: Mapped[int | None] = mapped_column(Integer, default=None)
    ram_mb: Mapped[int | None] = mapped_column(Integer, default=None)
    storage_gb: Mapped[int | None] = mapped_column(Integer, default=None)
    backups: Mapped[int | None] = mapped_column(Integer, default=None)


class Token(Timestamps, Base):
    __tablename__ = "tokens"
    __table_args__ = (
        # A name is unique in its project among live tokens; a revoked name is free again.
        Index(
            "uq_tokens_project_name_live",
            "project_id",
            "name",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # admin | member | reader
    expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # The platform user a token was issued to (Keystone's password method); None: made
    # with a token (`onep token create`, `onep up`, a project's first token).
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None, index=True
    )


class User(Timestamps, Base):
    """A platform user: a name in one project, a role (as tokens have) and a password kept
    only as an Argon2id hash. It signs in through the Keystone facade and gets tokens."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(63))
    role: Mapped[str] = mapped_column(String(16))  # admin | member | reader
    password_hash: Mapped[str] = mapped_column(String(255))


class Pool(Timestamps, Base):
    __tablename__ = "pools"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    compute_type: Mapped[str] = mapped_column(String(16))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The project a pool belongs to (a cluster's); None: the platform's, every project's.
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id"), default=None)


def _pool_compute_type(context: Any) -> str:
    pool_id = context.get_current_parameters()["pool_id"]
    found = context.connection.execute(
        text("SELECT compute_type FROM pools WHERE id = :id"), {"id": pool_id}
    ).scalar()
    return str(found)


class Host(Timestamps, Base):
    __tablename__ = "hosts"
    # The scheduler's weigher order (most free RAM, then vCPUs): it reads the best few hosts
    # off this index instead of sorting every host.
    __table_args__ = (
        Index(
            "ix_hosts_weigher_order",
            "compute_type",
            text("(ram_mb * ram_allocation_ratio - used_ram_mb) DESC"),
            text("(vcpus * cpu_allocation_ratio - used_vcpus) DESC"),
            text("id"),
        ),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    pool_id: Mapped[str] = mapped_column(ForeignKey("pools.id"))
    # Its pool's (which never changes), copied at insert for the scheduler's index.
    compute_type: Mapped[str] = mapped_column(String(16), default=_pool_compute_type)
    uri: Mapped[str] = mapped_column(String(255))
    # The machine the host publishes service ports on ("local" for this one); two hosts on
    # one machine and address share that machine's ports.
    machine: Mapped[str] = mapped_column(String(255), default="local")
    bind_address: Mapped[str] = mapped_column(String(64), default="127.0.0.1")
    # Its own driver settings (identity_file, host_key), merged over its pool's.
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    vcpus: Mapped[int] = mapped_column(Integer)
    ram_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)
    cpu_allocation_ratio: Mapped[float] = mapped_column(default=4.0)
    ram_allocation_ratio: Mapped[float] = mapped_column(default=1.0)
    traits: Mapped[list[Any]] = mapped_column(default=list)
    port_range_start: Mapped[int] = mapped_column(Integer, default=20000)
    port_range_end: Mapped[int] = mapped_column(Integer, default=29999)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # Failure domains: the weighers spread a project's instances across zones, then racks.
    zone: Mapped[str] = mapped_column(String(63), default="")
    rack: Mapped[str] = mapped_column(String(63), default="")
    # What its live instances use: kept equal to their sums by triggers on the instances
    # table (migration 0010), in the same transaction as any change; the code never writes it.
    used_vcpus: Mapped[int] = mapped_column(Integer, default=0)
    used_ram_mb: Mapped[int] = mapped_column(Integer, default=0)
    used_disk_gb: Mapped[int] = mapped_column(Integer, default=0)
    used_instances: Mapped[int] = mapped_column(Integer, default=0)
    # Bumped by every placement and resize on this host (a change counter for observers).
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # Its pool's owner (a cluster's node), copied for the scheduler; None: every project's.
    project_id: Mapped[str | None] = mapped_column(String(32), default=None)


class Flavor(Timestamps, Base):
    __tablename__ = "flavors"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    compute_type: Mapped[str] = mapped_column(String(16))
    vcpus: Mapped[int] = mapped_column(Integer)
    ram_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)
    traits: Mapped[list[Any]] = mapped_column(default=list)
    # A project's own flavor (a cluster's), placed only on the hosts of ``pool_id``; None:
    # every project's, placed only on hosts that are every project's.
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id"), default=None)
    pool_id: Mapped[str | None] = mapped_column(ForeignKey("pools.id"), default=None)


class Image(Timestamps, Base):
    __tablename__ = "images"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # BUILDING | READY | ERROR
    status_message: Mapped[str] = mapped_column(Text, default="")
    formats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    ports: Mapped[dict[str, Any]] = mapped_column(default=dict)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)


class Instance(Timestamps, Base):
    __tablename__ = "instances"
    __table_args__ = (
        # Names are unique per project among live instances; a deleted name is free again.
        Index(
            "uq_instances_project_name_live",
            "project_id",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    flavor_id: Mapped[str] = mapped_column(ForeignKey("flavors.id"))
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"))
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), index=True)
    compute_type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    status_message: Mapped[str] = mapped_column(Text, default="")
    power_state: Mapped[str] = mapped_column(String(16), default="unknown")
    # Set when a service (e.g. "dbaas") owns the instance: hidden from the compute API.
    managed_by: Mapped[str | None] = mapped_column(String(32), default=None)
    # Encrypted config bundle and the volumes the instance owns (the compute layer passes
    # both to the driver without looking inside the bundle).
    bundle_enc: Mapped[str | None] = mapped_column(Text, default=None)
    volumes: Mapped[list[Any]] = mapped_column(default=list)
    # Capacity held on the host while the instance is not deleted.
    vcpus: Mapped[int] = mapped_column(Integer)
    ram_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # The isolation group of its network when it is not its project's: a warm instance is
    # made alone in one of its own, and keeps it when it is claimed.
    network_group: Mapped[str | None] = mapped_column(String(32), default=None)


class Cluster(Timestamps, Base):
    """A container pool of one project composed from the platform's own VMs (its nodes),
    with a flavor of its own; the owner reaches each node's Podman over SSH."""

    __tablename__ = "clusters"
    __table_args__ = (
        # Its pool and flavor are named after it, and their names are global.
        Index(
            "uq_clusters_name_live",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    status: Mapped[str] = mapped_column(String(16))
    status_message: Mapped[str] = mapped_column(Text, default="")
    node_flavor_id: Mapped[str] = mapped_column(ForeignKey("flavors.id"))
    size: Mapped[int] = mapped_column(Integer)  # the nodes wanted
    pool_id: Mapped[str | None] = mapped_column(ForeignKey("pools.id"), default=None)
    flavor_id: Mapped[str | None] = mapped_column(ForeignKey("flavors.id"), default=None)
    # The owner's SSH public key, authorized on every node beside the platform's own.
    public_key: Mapped[str | None] = mapped_column(Text, default=None)
    # The platform-made SSH private key of the cluster (OpenSSH format), encrypted.
    key_enc: Mapped[str] = mapped_column(Text)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class ClusterNode(Timestamps, Base):
    """One node of a cluster: a compute instance of the owner's project running Podman, and
    (once it answers) a host of the cluster's pool."""

    __tablename__ = "cluster_nodes"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id"), index=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"))
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), default=None)
    name: Mapped[str] = mapped_column(String(63))
    status: Mapped[str] = mapped_column(String(16))  # BUILD ACTIVE DRAINING DELETED ERROR
    ssh_port: Mapped[int | None] = mapped_column(Integer, default=None)
    # Its block of forwarded ports (host port = guest port): its host's port range.
    port_range_start: Mapped[int | None] = mapped_column(Integer, default=None)
    port_range_end: Mapped[int | None] = mapped_column(Integer, default=None)
    # The public half of the SSH host key the platform made for it (the private half reaches
    # the node in its config bundle only): the one key trusted when reaching its sshd.
    host_key: Mapped[str] = mapped_column(Text, default="")
    deleted_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class WarmPool(Timestamps, Base):
    """Warm capacity an operator keeps: ``target`` ready instances of one flavor, datastore
    version and data volume size, made ahead of any request."""

    __tablename__ = "warm_pools"
    __table_args__ = (UniqueConstraint("flavor_id", "datastore", "version"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    flavor_id: Mapped[str] = mapped_column(ForeignKey("flavors.id"))
    datastore: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(16))
    size_gb: Mapped[int] = mapped_column(Integer, default=1)
    target: Mapped[int] = mapped_column(Integer, default=0)
    # Why the last attempt to add a warm instance failed (no capacity ...), and when the
    # keeper tries again.
    message: Mapped[str] = mapped_column(Text, default="")
    retry_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class WarmInstance(Timestamps, Base):
    """One warm instance: BUILDING, READY, CLAIMED (by ``claimed_by``, a database instance)
    or DELETING/DELETED. A claimed one is its owner's; it is never warm again."""

    __tablename__ = "warm_instances"
    __table_args__ = (Index("ix_warm_instances_pool_status", "pool_id", "status"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    pool_id: Mapped[str] = mapped_column(ForeignKey("warm_pools.id"))
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    status_message: Mapped[str] = mapped_column(Text, default="")
    # The warm bundle's agent secret: what signs and seals the claim.
    secret_enc: Mapped[str] = mapped_column(Text)
    ready_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    claimed_by: Mapped[str | None] = mapped_column(String(32), default=None)


class DbInstance(Timestamps, Base):
    """A database server: a compute instance + datastore + storage + credentials."""

    __tablename__ = "db_instances"
    __table_args__ = (
        UniqueConstraint("rw_port", name="uq_db_instances_rw_port"),
        UniqueConstraint("ro_port", name="uq_db_instances_ro_port"),
        Index(
            "uq_db_instances_project_name_live",
            "project_id",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    datastore: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(16))
    flavor_id: Mapped[str] = mapped_column(ForeignKey("flavors.id"))
    instance_id: Mapped[str | None] = mapped_column(ForeignKey("instances.id"), default=None)
    size_gb: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    status_message: Mapped[str] = mapped_column(Text, default="")
    health: Mapped[str] = mapped_column(String(16), default="UNKNOWN")
    health_message: Mapped[str] = mapped_column(Text, default="")
    health_checked_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # What the health checker last read of the engine (its agent's /v1/stats, with each
    # replica's lag and when), for /metrics; None until read.
    engine_stats: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    admin_username: Mapped[str] = mapped_column(String(63))
    # Secrets, encrypted at rest (secrets.SecretBox); never logged, never in operations.
    admin_password_enc: Mapped[str] = mapped_column(Text)
    admin_password_pending_enc: Mapped[str | None] = mapped_column(Text, default=None)
    # The platform's own role in the engine (users, passwords); None for instances made
    # before it existed, whose admin is the engine's superuser.
    platform_password_enc: Mapped[str | None] = mapped_column(Text, default=None)
    agent_secret_enc: Mapped[str] = mapped_column(Text)
    # Initial databases and users (with passwords) until the create has applied them.
    pending_enc: Mapped[str | None] = mapped_column(Text, default=None)
    # Its backup repository (a bucket of its own in the backup store, with its own keys and
    # cipher passphrase); kept after the instance is deleted, for its backups and window.
    repo_bucket: Mapped[str | None] = mapped_column(String(63), default=None)
    repo_access_key: Mapped[str | None] = mapped_column(String(64), default=None)
    repo_secret_enc: Mapped[str | None] = mapped_column(Text, default=None)
    repo_cipher_enc: Mapped[str | None] = mapped_column(Text, default=None)
    # The latest moment known to be archived (its WAL is in the repository): the end of the
    # recovery window once the instance is gone.
    archived_until: Mapped[dt.datetime | None] = mapped_column(default=None)
    # Its stable endpoints on the endpoint proxy (read-write: the primary; read-only: the
    # replicas), whatever member is the primary; None for instances from before them.
    endpoint_address: Mapped[str | None] = mapped_column(String(64), default=None)
    rw_port: Mapped[int | None] = mapped_column(Integer, default=None)
    ro_port: Mapped[int | None] = mapped_column(Integer, default=None)
    # The password of its replication role (onep_repl_<id>), made on the first replica.
    repl_password_enc: Mapped[str | None] = mapped_column(Text, default=None)
    # Its configuration group, and whether a value of it waits for the engine's restart.
    configuration_id: Mapped[str | None] = mapped_column(
        ForeignKey("configuration_groups.id"), default=None, index=True
    )
    restart_required: Mapped[bool] = mapped_column(Boolean, default=False)
    # Its data filesystem as the guest agent last reported it (health checks, storage
    # growth); None until it did.
    storage_total_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    storage_used_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    storage_free_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    storage_checked_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # Auto-growth: grow by half when over 80 % full, up to this size; None: off.
    autogrow_max_gb: Mapped[int | None] = mapped_column(Integer, default=None)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class ConfigurationGroup(Timestamps, Base):
    """Engine parameters of one datastore version, named in a project; the database
    instances attached to it run with its values."""

    __tablename__ = "configuration_groups"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_configuration_groups_name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(Text, default="")
    datastore: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(16))
    # {parameter: value}, validated and normalised against the version's catalog.
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class DbMember(Timestamps, Base):
    """One server of a database instance's group: its primary or a streaming replica, on a
    compute instance of its own. The database instance's ``instance_id`` is its primary's."""

    __tablename__ = "db_members"
    __table_args__ = (
        Index(
            "uq_db_members_project_name_live",
            "project_id",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    db_id: Mapped[str] = mapped_column(ForeignKey("db_instances.id"), index=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(63))
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"))
    role: Mapped[str] = mapped_column(String(16))  # primary | replica
    status: Mapped[str] = mapped_column(String(16))  # BUILD | ACTIVE | ERROR | DELETING | DELETED
    status_message: Mapped[str] = mapped_column(Text, default="")
    deleted_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class Backup(Timestamps, Base):
    """A backup of a database instance in its repository: NEW, BUILDING, COMPLETED or FAILED,
    then DELETING and DELETED. It outlives its database instance."""

    __tablename__ = "backups"
    __table_args__ = (
        Index(
            "uq_backups_project_name_live",
            "project_id",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    db_instance_id: Mapped[str] = mapped_column(ForeignKey("db_instances.id"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    type: Mapped[str] = mapped_column(String(8))  # full | diff | incr
    status: Mapped[str] = mapped_column(String(16))
    status_message: Mapped[str] = mapped_column(Text, default="")
    scheduled: Mapped[bool] = mapped_column(default=False)
    label: Mapped[str | None] = mapped_column(String(64), default=None)  # the tool's own
    parent_id: Mapped[str | None] = mapped_column(String(32), default=None)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    repo_size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    wal_start: Mapped[str | None] = mapped_column(String(32), default=None)
    wal_stop: Mapped[str | None] = mapped_column(String(32), default=None)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class BackupSchedule(Timestamps, Base):
    """When a database instance is backed up by itself, and how long its backups are kept."""

    __tablename__ = "backup_schedules"
    db_instance_id: Mapped[str] = mapped_column(ForeignKey("db_instances.id"), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    every_seconds: Mapped[int] = mapped_column(Integer)
    full_every_seconds: Mapped[int | None] = mapped_column(Integer, default=None)
    keep_days: Mapped[float] = mapped_column(Float)
    next_run_at: Mapped[dt.datetime] = mapped_column(index=True)
    last_full_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    message: Mapped[str] = mapped_column(Text, default="")


class Node(Timestamps, Base):
    """A bare-metal machine behind a BMC; one unit of capacity (its Host row)."""

    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    pool_id: Mapped[str] = mapped_column(ForeignKey("pools.id"))
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), default=None)
    state: Mapped[str] = mapped_column(String(24))
    # the state machine's last move, for `onep node show`
    target_state: Mapped[str | None] = mapped_column(String(24), default=None)
    last_error: Mapped[str] = mapped_column(Text, default="")
    power_state: Mapped[str] = mapped_column(String(16), default="unknown")
    bmc_protocol: Mapped[str] = mapped_column(String(16), default="redfish")
    bmc_address: Mapped[str] = mapped_column(String(255))
    bmc_system_id: Mapped[str] = mapped_column(String(255))
    bmc_username: Mapped[str] = mapped_column(String(63), default="")
    bmc_password_enc: Mapped[str] = mapped_column(Text, default="")
    inventory: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # How the node's service ports are reached: {guest_port: {"host": ..., "port": ...}}.
    # On a real network that is the node's address; in the emulated lab, host forwards.
    port_map: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The NIC its deploy ramdisk configures, on the provisioning network: {"mac", "address"}
    # (empty: the first NIC, on QEMU user networking's defaults).
    provisioning: Mapped[dict[str, Any]] = mapped_column(default=dict)
    instance_id: Mapped[str | None] = mapped_column(ForeignKey("instances.id"), default=None)


class DeployToken(Base):
    """A per-deploy secret in the URLs a node's deploy agent fetches and reports to."""

    __tablename__ = "deploy_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_enc: Mapped[str] = mapped_column(Text)  # the steps need it to build media URLs
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), index=True)
    instance_id: Mapped[str | None] = mapped_column(ForeignKey("instances.id"), default=None)
    # The operation whose ramdisk run the token serves: no other run can use it.
    operation_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    purpose: Mapped[str] = mapped_column(String(16))  # deploy | clean
    image_name: Mapped[str | None] = mapped_column(String(63), default=None)
    bundle_enc: Mapped[str | None] = mapped_column(Text, default=None)
    # waiting | running | ok | error, then done (its run finished) or closed (it failed)
    status: Mapped[str] = mapped_column(String(16), default="waiting")
    bundle_served_at: Mapped[dt.datetime | None] = mapped_column(default=None)  # served once
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column()


class PortAllocation(Base):
    """A port on a machine's address, held by one instance's service: a property of the
    machine and address, not of the host row, so hosts that share a machine never collide."""

    __tablename__ = "port_allocations"
    __table_args__ = (
        UniqueConstraint("machine", "address", "host_port", name="uq_port_allocations_port"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id"))
    machine: Mapped[str] = mapped_column(String(255))
    address: Mapped[str] = mapped_column(String(64))
    host_port: Mapped[int] = mapped_column(Integer)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    guest_port: Mapped[int] = mapped_column(Integer)


class Operation(Timestamps, Base):
    __tablename__ = "operations"
    __table_args__ = (Index("ix_operations_claim", "status", "not_before"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id"), index=True)
    kind: Mapped[str] = mapped_column(String(63))
    intent: Mapped[str] = mapped_column(String(16))  # create | delete | action
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16))  # PENDING RUNNING SUCCEEDED FAILED
    steps: Mapped[list[Any]] = mapped_column(default=list)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error_code: Mapped[str | None] = mapped_column(String(63), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    not_before: Mapped[dt.datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    fencing_token: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(32), index=True)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class UiSession(Timestamps, Base):
    """A web dashboard login: a one-time ticket (``kind`` ticket) or a browser session
    (``kind`` session). Only the secret's SHA-256 is kept; it acts as the API token that
    made it (a revoked or expired token ends its sessions)."""

    __tablename__ = "ui_sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    token_id: Mapped[str] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # ticket | session
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64), default="")
    expires_at: Mapped[dt.datetime] = mapped_column()
    used_at: Mapped[dt.datetime | None] = mapped_column(default=None)  # exchanged / logged out


class LoopLease(Base):
    """Who runs a background loop (reconciler, health checker ...) across all processes:
    one row per loop, taken and renewed by one conditional upsert (ops/leases.py).
    ``generation`` grows by one each time the holder changes."""

    __tablename__ = "loop_leases"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[dt.datetime] = mapped_column()
    generation: Mapped[int] = mapped_column(Integer, default=1)
    acquired_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
