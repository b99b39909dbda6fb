"""Databases as a service: datastores, database instances, databases, users."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import Field, StringConstraints

from oneplatform.schemas.base import CatalogName, Request, ResourceName, Response
from oneplatform.schemas.operations import OperationOut

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


class DatastoreOut(Response):
    name: str
    versions: list[DatastoreVersionOut]


class DbUserSpec(Request):
    name: DbObjectName
    password: Password
    databases: list[DbObjectName] = []


class DbInstanceCreate(Request):
    name: ResourceName
    datastore: str = "postgresql"
    version: str | None = None
    flavor: CatalogName
    size_gb: int = Field(default=1, ge=1, le=1024, description="Data volume size.")
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


class DbEndpoint(Response):
    host: str
    port: int


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
    endpoint: DbEndpoint | None = None
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
