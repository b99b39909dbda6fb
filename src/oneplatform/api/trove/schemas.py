"""What Trove's clients send: lenient (they send fields the platform has no use for, like
``nics`` or ``availability_zone``), each shape both clients use accepted."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from oneplatform.schemas.databases import Password


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class NamedRef(Lenient):
    name: str


class TroveUser(Lenient):
    name: str
    password: str | None = None
    host: str | None = None
    databases: list[NamedRef] = []


class Volume(Lenient):
    size: int | None = None
    type: str | None = None


class DatastoreRef(Lenient):
    type: str | None = None
    version: str | None = None


class RestorePoint(Lenient):
    backupRef: str


class InstanceSpec(Lenient):
    name: str
    flavorRef: str | int | None = None
    flavor: str | int | dict[str, Any] | None = Field(
        default=None, description="openstacksdk's name for flavorRef."
    )
    volume: Volume | None = None
    datastore: DatastoreRef | None = None
    databases: list[NamedRef] = []
    users: list[TroveUser] = []
    restorePoint: RestorePoint | None = None
    replica_of: str | None = None
    replica_count: int | None = None
    configuration: str | None = None


class InstanceCreate(Lenient):
    instance: InstanceSpec


class InstanceChange(Lenient):
    name: str | None = None
    configuration: str | None = None
    replica_of: str | None = None


class InstanceUpdate(Lenient):
    instance: InstanceChange


class DatabasesCreate(Lenient):
    databases: list[NamedRef] = []
    database: NamedRef | None = Field(default=None, description="openstacksdk's shape.")


class UsersCreate(Lenient):
    users: list[TroveUser] = []
    user: TroveUser | None = Field(default=None, description="openstacksdk's shape.")


class UserAttributes(Lenient):
    """Trove's ``update_attributes``: any of them (``{"user": {"password": …}}`` alone is
    what trove-tempest-plugin sends)."""

    name: str | None = None
    password: str | None = None
    host: str | None = None


class UserChange(Lenient):
    user: UserAttributes


class PasswordsChange(Lenient):
    users: list[TroveUser]


class AccessGrant(Lenient):
    databases: list[NamedRef]


class BackupSpec(Lenient):
    name: str
    instance: str
    description: str | None = None
    parent_id: str | None = None
    incremental: int | bool = 0


class BackupCreate(Lenient):
    backup: BackupSpec


class ConfigurationSpec(Lenient):
    name: str
    description: str | None = None
    values: dict[str, Any] = {}
    datastore: DatastoreRef | None = None


class ConfigurationCreate(Lenient):
    configuration: ConfigurationSpec


class ConfigurationValues(Lenient):
    values: dict[str, Any] = {}
    name: str | None = None
    description: str | None = None


class ConfigurationChange(Lenient):
    configuration: ConfigurationValues


class RootEnable(Lenient):
    """``POST /instances/{id}/root``'s optional body (troveclient's ``root_password``)."""

    password: Password | None = None
