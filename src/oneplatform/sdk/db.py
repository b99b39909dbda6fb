"""The SDK's database service: database instances, their databases, users and grants."""

from __future__ import annotations

import builtins
import datetime as dt
from typing import TYPE_CHECKING, Any

from oneplatform.schemas.backups import (
    BackupAccepted,
    BackupCreate,
    BackupOut,
    ScheduleOut,
    ScheduleSet,
)
from oneplatform.schemas.databases import (
    Credentials,
    DatabaseCreate,
    DatabaseOut,
    DatastoreOut,
    DbEventOut,
    DbInstanceAccepted,
    DbInstanceCreate,
    DbInstanceOut,
    DbLogOut,
    DbMemberOut,
    DbUserCreate,
    DbUserCreated,
    DbUserOut,
    DbUserSpec,
    GrantRequest,
    MoveRequest,
    PasswordChange,
    ReplicaAccepted,
    ReplicaCreate,
    ReplicaDetach,
    StorageAutogrow,
    StorageResize,
    SwitchoverRequest,
)

if TYPE_CHECKING:
    from oneplatform.sdk.client import Client

BASE = "/v1/db/instances"


class DbInstances:
    def __init__(self, client: Client) -> None:
        self.c = client

    def datastores(self) -> builtins.list[DatastoreOut]:
        return self.c.get_list("/v1/datastores", DatastoreOut)

    def list(self) -> builtins.list[DbInstanceOut]:
        return self.c.get_list(BASE, DbInstanceOut)

    def get(self, ident: str) -> DbInstanceOut:
        return self.c.get(f"{BASE}/{ident}", DbInstanceOut)

    def create(
        self,
        name: str,
        flavor: str,
        datastore: str | None = None,
        version: str | None = None,
        size_gb: int = 1,
        databases: builtins.list[str] | None = None,
        users: builtins.list[dict[str, Any]] | None = None,
        restore: str | None = None,
        restore_from: str | None = None,
        to_time: dt.datetime | None = None,
        replicas: int = 0,
        replica_flavor: str | None = None,
        configuration: str | None = None,
    ) -> DbInstanceAccepted:
        """``users``: ``[{"name": ..., "password": ..., "databases": [...]}]``; ``restore``
        (a backup) or ``restore_from`` (a database instance's window, with ``to_time``);
        ``datastore`` and ``version``: by default a restore's source's, else PostgreSQL's
        newest."""
        body = DbInstanceCreate.model_construct(
            name=name,
            flavor=flavor,
            datastore=datastore,
            version=version,
            size_gb=size_gb,
            databases=databases or [],
            users=[DbUserSpec.model_construct(**u) for u in users or []],
            restore=restore,
            restore_from=restore_from,
            to_time=to_time,
            replicas=replicas,
            replica_flavor=replica_flavor,
            configuration=configuration,
        )
        return self.c.send("POST", BASE, DbInstanceAccepted, body)

    # -- backups
    def create_backup(
        self, ident: str, type: str = "full", name: str | None = None
    ) -> BackupAccepted:
        body = BackupCreate.model_construct(type=type, name=name)  # type: ignore[arg-type]
        return self.c.send("POST", f"{BASE}/{ident}/backups", BackupAccepted, body)

    def list_backups(self, database: str | None = None) -> builtins.list[BackupOut]:
        params = {"database": database} if database else {}
        return self.c.get_list("/v1/backups", BackupOut, **params)

    def get_backup(self, ident: str) -> BackupOut:
        return self.c.get(f"/v1/backups/{ident}", BackupOut)

    def delete_backup(self, ident: str) -> BackupAccepted:
        return self.c.send("DELETE", f"/v1/backups/{ident}", BackupAccepted)

    def set_schedule(
        self, ident: str, every_seconds: int, keep_days: float, full_every_seconds: int | None
    ) -> ScheduleOut:
        body = ScheduleSet.model_construct(
            every_seconds=every_seconds, keep_days=keep_days, full_every_seconds=full_every_seconds
        )
        return self.c.send("PUT", f"{BASE}/{ident}/backup-schedule", ScheduleOut, body)

    def get_schedule(self, ident: str) -> ScheduleOut:
        return self.c.get(f"{BASE}/{ident}/backup-schedule", ScheduleOut)

    def delete_schedule(self, ident: str) -> None:
        self.c.request("DELETE", f"{BASE}/{ident}/backup-schedule")

    # -- replicas, switchover, moves
    def events(self, ident: str, limit: int = 100) -> builtins.list[DbEventOut]:
        """The latest ``limit`` events of the database instance, oldest first."""
        return self.c.get_list(f"{BASE}/{ident}/events", DbEventOut, limit=limit)

    def logs(
        self, ident: str, tail: int = 100, after: int | None = None, member: str | None = None
    ) -> DbLogOut:
        """The engine log of the primary (or ``member``): its last ``tail`` lines, or those
        after line ``after``."""
        params: dict[str, Any] = {"tail": tail}
        if after is not None:
            params["after"] = after
        if member is not None:
            params["member"] = member
        return self.c.get(f"{BASE}/{ident}/logs", DbLogOut, **params)

    def list_replicas(self, ident: str) -> builtins.list[DbMemberOut]:
        """The group's members, the primary first, with each replica's lag."""
        return self.c.get_list(f"{BASE}/{ident}/replicas", DbMemberOut)

    def create_replica(
        self, ident: str, name: str | None = None, flavor: str | None = None
    ) -> ReplicaAccepted:
        body = ReplicaCreate.model_construct(name=name, flavor=flavor)
        return self.c.send("POST", f"{BASE}/{ident}/replicas", ReplicaAccepted, body)

    def delete_replica(self, name: str) -> ReplicaAccepted:
        return self.c.send("DELETE", f"/v1/db/replicas/{name}", ReplicaAccepted)

    def detach_replica(self, name: str, new_name: str | None = None) -> DbInstanceAccepted:
        body = ReplicaDetach.model_construct(name=new_name)
        return self.c.send("POST", f"/v1/db/replicas/{name}/detach", DbInstanceAccepted, body)

    def switchover(
        self, ident: str, to: str | None = None, timeout_seconds: float = 60.0
    ) -> DbInstanceAccepted:
        body = SwitchoverRequest.model_construct(to=to, timeout_seconds=timeout_seconds)
        return self.c.send("POST", f"{BASE}/{ident}/switchover", DbInstanceAccepted, body)

    def move(self, ident: str, flavor: str, timeout_seconds: float = 60.0) -> DbInstanceAccepted:
        body = MoveRequest.model_construct(flavor=flavor, timeout_seconds=timeout_seconds)
        return self.c.send("POST", f"{BASE}/{ident}/move", DbInstanceAccepted, body)

    def resize(self, ident: str, size_gb: int) -> DbInstanceAccepted:
        """Grow the data volume of every member to ``size_gb`` (storage only grows)."""
        body = StorageResize.model_construct(size_gb=size_gb)
        return self.c.send("POST", f"{BASE}/{ident}/resize", DbInstanceAccepted, body)

    def set_autogrow(self, ident: str, max_gb: int | None) -> DbInstanceOut:
        """Auto-growth up to ``max_gb`` (None: off)."""
        body = StorageAutogrow.model_construct(max_gb=max_gb)
        return self.c.send("PUT", f"{BASE}/{ident}/autogrow", DbInstanceOut, body)

    def delete(self, ident: str) -> DbInstanceAccepted:
        return self.c.send("DELETE", f"{BASE}/{ident}", DbInstanceAccepted)

    def restart(self, ident: str) -> DbInstanceAccepted:
        return self.c.send("POST", f"{BASE}/{ident}/restart", DbInstanceAccepted)

    def credentials(self, ident: str) -> Credentials:
        return self.c.get(f"{BASE}/{ident}/credentials", Credentials)

    def reset_password(self, ident: str) -> Credentials:
        return self.c.send("POST", f"{BASE}/{ident}/reset-password", Credentials)

    # databases
    def list_databases(self, ident: str) -> builtins.list[DatabaseOut]:
        return self.c.get_list(f"{BASE}/{ident}/databases", DatabaseOut)

    def create_database(self, ident: str, name: str) -> DatabaseOut:
        body = DatabaseCreate.model_construct(name=name)
        return self.c.send("POST", f"{BASE}/{ident}/databases", DatabaseOut, body)

    def delete_database(self, ident: str, name: str) -> None:
        self.c.request("DELETE", f"{BASE}/{ident}/databases/{name}")

    # users and grants
    def list_users(self, ident: str) -> builtins.list[DbUserOut]:
        return self.c.get_list(f"{BASE}/{ident}/users", DbUserOut)

    def create_user(
        self,
        ident: str,
        name: str,
        password: str | None = None,
        databases: builtins.list[str] | None = None,
    ) -> DbUserCreated:
        body = DbUserCreate.model_construct(name=name, password=password, databases=databases or [])
        return self.c.send("POST", f"{BASE}/{ident}/users", DbUserCreated, body)

    def delete_user(self, ident: str, name: str) -> None:
        self.c.request("DELETE", f"{BASE}/{ident}/users/{name}")

    def set_password(self, ident: str, name: str, password: str | None = None) -> Credentials:
        body = PasswordChange.model_construct(password=password)
        return self.c.send("PUT", f"{BASE}/{ident}/users/{name}/password", Credentials, body)

    def grant(self, ident: str, user: str, database: str) -> DbUserOut:
        body = GrantRequest.model_construct(database=database)
        return self.c.send("POST", f"{BASE}/{ident}/users/{user}/grants", DbUserOut, body)

    def revoke(self, ident: str, user: str, database: str) -> DbUserOut:
        return self.c.send("DELETE", f"{BASE}/{ident}/users/{user}/grants/{database}", DbUserOut)
