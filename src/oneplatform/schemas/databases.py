"""Databases as a service: datastores, database instances, databases, users."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import Field, StringConstraints

from oneplatform.schemas.base import CatalogName, Request, ResourceName, Response
from oneplatform.schemas.compute import CapabilityOut
from oneplatform.schemas.operations import OperationOut

MAX_SIZE_GB = 1024  # a data volume's largest size

DbObjectName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,62}$"),
    Field(description="Lower-case letters, digits and '_', starting with a letter or '_'."),
]
Password = Annotated[
    str,
    StringConstraints(min_length=8, max_length=128, pattern=r"^[\x21-\x7e]+$"),
    Field(description="8-128 printable ASCII characters without spaces."),
]


class DatastoreVersionOut(Response):
    version: str
    image: str
    default: bool
    capabilities: list[CapabilityOut] = Field(
        description="What the platform can do with this engine; each 'no' with its reason."
    )
    backup_types: list[str] = Field(description="What `onep backup create --type` takes.")


class DatastoreOut(Response):
    name: str
    versions: list[DatastoreVersionOut]


class DbUserSpec(Request):
    name: DbObjectName
    password: Password
    databases: list[DbObjectName] = []


class DbInstanceCreate(Request):
    name: ResourceName
    datastore: str | None = Field(
        default=None,
        description="The engine; by default a restore's source's, else postgresql.",
    )
    version: str | None = Field(
        default=None,
        description="The engine's version; by default a restore's source's, else the newest.",
    )
    flavor: CatalogName
    size_gb: int = Field(default=1, ge=1, le=MAX_SIZE_GB, description="Data volume size.")
    databases: list[DbObjectName] = Field(default=[], max_length=64)
    users: list[DbUserSpec] = Field(default=[], max_length=64)
    restore: str | None = Field(
        default=None,
        description="A backup (name or id) to restore: the new instance starts "
        "with its data and users, and credentials of its own.",
    )
    restore_from: str | None = Field(
        default=None,
        description="A database instance (name or id, deleted or not) whose recovery window "
        "to restore from, at ``to_time``.",
    )
    to_time: dt.datetime | None = Field(
        default=None, description="Recover to this moment (with ``restore`` or ``restore_from``)."
    )
    replicas: int = Field(
        default=0, ge=0, le=7, description="Streaming replicas made with it (an HA group)."
    )
    configuration: str | None = Field(
        default=None,
        description="A configuration group (name or id) of the same datastore version: "
        "the engine starts with its values.",
    )
    replica_flavor: CatalogName | None = Field(
        default=None, description="The replicas' flavor, of any compute type (default: its own)."
    )


class DbEndpoint(Response):
    host: str
    port: int


class DbEventOut(Response):
    """One change in a database instance's life: its own, its members', their compute's or
    its backups' (a state change, a repair, a switchover, a failover ...)."""

    at: dt.datetime
    resource: str = Field(description="database, member, compute or backup")
    name: str = Field(description="the database's, member's or backup's name")
    from_status: str | None = None
    to_status: str
    message: str = ""


class DbLogOut(Response):
    """Lines of a member's engine log (its server's own output), oldest first."""

    member: str
    lines: list[str]
    next: int = Field(description="ask with after=next for the lines that come later")


class DbMemberOut(Response):
    """One server of the database instance's group."""

    name: str
    role: str = Field(description="primary or replica")
    flavor: str
    compute_type: str
    state: str = Field(description="BUILD, ACTIVE, DELETING, DELETED or ERROR")
    status_message: str = ""
    lag_bytes: int | None = Field(
        default=None, description="WAL the replica has yet to replay (null: not known now)."
    )
    lag_seconds: float | None = Field(
        default=None, description="The primary's measure of the replica's replay delay."
    )
    endpoint: DbEndpoint | None = Field(
        default=None, description="The member's own engine endpoint (for diagnosis)."
    )


class ReplicaCreate(Request):
    name: ResourceName | None = Field(default=None, description="Default: NAME-r<n>.")
    flavor: CatalogName | None = Field(
        default=None, description="Any flavor, of any compute type; default: the primary's."
    )


class ReplicaDetach(Request):
    name: ResourceName | None = Field(
        default=None, description="The new database instance's name; default: the replica's."
    )


class ReplicaAccepted(Response):
    operation: OperationOut
    replica: DbMemberOut


class SwitchoverRequest(Request):
    to: str | None = Field(
        default=None, description="The replica to promote; default: the most advanced one."
    )
    timeout_seconds: float = Field(
        default=60.0,
        ge=5,
        le=3600,
        description="If the target has not caught up by then, nothing changes: the primary "
        "serves on.",
    )


class MoveRequest(Request):
    flavor: CatalogName
    timeout_seconds: float = Field(
        default=60.0, ge=5, le=3600, description="The switchover's timeout (as for a switchover)."
    )


class StorageResize(Request):
    size_gb: int = Field(
        ge=1,
        le=MAX_SIZE_GB,
        description="The data volume's new size in GB: larger than the current one (storage "
        "only grows).",
    )


class StorageAutogrow(Request):
    max_gb: int | None = Field(
        ge=2,
        le=MAX_SIZE_GB,
        description="Grow the storage by half when it is over 80 % full, up to this size in GB "
        "(above the current size); null turns auto-growth off.",
    )


class DbStorageOut(Response):
    total_bytes: int
    used_bytes: int
    free_bytes: int = Field(description="What the engine may still write.")
    checked_at: dt.datetime = Field(description="When the guest agent reported it.")


class DbInstanceOut(Response):
    id: str
    name: str
    project_id: str
    status: str
    status_message: str = ""
    health: str
    health_message: str = ""
    health_checked_at: dt.datetime | None = Field(
        default=None, description="When the health checker last asked the engine."
    )
    datastore: str
    version: str
    flavor: str
    compute_type: str
    size_gb: int
    storage: DbStorageOut | None = Field(
        default=None,
        description="The data filesystem as the guest agent last reported it (on a "
        "container: the host storage its volume is a directory of, since a container "
        "volume's size is recorded, not enforced).",
    )
    autogrow_max_gb: int | None = Field(
        default=None,
        description="Auto-growth: the storage grows by half when over 80 % full, up to this "
        "size (null: off).",
    )
    max_size_gb: int | None = Field(
        default=None,
        description="The most the storage can grow to where a member's device bounds it (on "
        "bare metal: the end of the node's disk, recorded at deploy); null: bounded only by "
        "the hosts' free disk.",
    )
    endpoint: DbEndpoint | None = Field(
        default=None,
        description="The stable read-write endpoint: it leads to whatever member is the primary.",
    )
    read_only_endpoint: DbEndpoint | None = Field(
        default=None, description="Balanced over the replicas (the primary when there is none)."
    )
    members: list[DbMemberOut] = Field(default=[], description="The primary and its replicas.")
    restorable_from: dt.datetime | None = Field(
        default=None, description="The start of the recovery window (its first backup's end)."
    )
    restorable_until: dt.datetime | None = Field(
        default=None, description="The end of the recovery window (the last archived moment)."
    )
    connection_uri: str | None = Field(
        default=None,
        description="The admin's connection URI, without the password "
        "(`onep db credentials NAME` shows it; `onep db connect NAME` uses it).",
    )
    configuration: str | None = Field(
        default=None, description="The name of its configuration group, if any."
    )
    restart_required: bool = Field(
        default=False,
        description="A value of its configuration group takes effect only once the engine "
        "restarts (`onep db restart NAME`).",
    )
    created_at: dt.datetime
    updated_at: dt.datetime


class DbInstanceAccepted(Response):
    operation: OperationOut
    instance: DbInstanceOut


class Credentials(Response):
    username: str
    password: str


class DatabaseCreate(Request):
    name: DbObjectName


class DatabaseOut(Response):
    name: str


class DbUserCreate(Request):
    name: DbObjectName
    password: Password | None = Field(default=None, description="Generated when omitted.")
    databases: list[DbObjectName] = []


class DbUserOut(Response):
    name: str
    databases: list[str] = []


class DbUserCreated(Response):
    user: DbUserOut
    password: str = Field(description="Shown once.")


class PasswordChange(Request):
    password: Password | None = Field(default=None, description="Generated when omitted.")


class GrantRequest(Request):
    database: DbObjectName
