"""The SDK's database service: database instances, their databases, users and grants."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

from oneplatform.api import schemas as s

if TYPE_CHECKING:
    from oneplatform.sdk.client import Client

BASE = "/v1/db/instances"


class DbInstances:
    def __init__(self, client: Client) -> None:
        self.c = client

    def datastores(self) -> builtins.list[s.DatastoreOut]:
        return self.c.get_list("/v1/datastores", s.DatastoreOut)

    def list(self) -> builtins.list[s.DbInstanceOut]:
        return self.c.get_list(BASE, s.DbInstanceOut)

    def get(self, ident: str) -> s.DbInstanceOut:
        return self.c.get(f"{BASE}/{ident}", s.DbInstanceOut)

    def create(
        self,
        name: str,
        flavor: str,
        datastore: str = "postgresql",
        version: str | None = None,
        size_gb: int = 1,
        databases: builtins.list[str] | None = None,
        users: builtins.list[dict[str, Any]] | None = None,
    ) -> s.DbInstanceAccepted:
        """``users``: ``[{"name": ..., "password": ..., "databases": [...]}]``."""
        body = s.DbInstanceCreate.model_construct(
            name=name,
            flavor=flavor,
            datastore=datastore,
            version=version,
            size_gb=size_gb,
            databases=databases or [],
            users=[s.DbUserSpec.model_construct(**u) for u in users or []],
        )
        return self.c.send("POST", BASE, s.DbInstanceAccepted, body)

    def delete(self, ident: str) -> s.DbInstanceAccepted:
        return self.c.send("DELETE", f"{BASE}/{ident}", s.DbInstanceAccepted)

    def restart(self, ident: str) -> s.DbInstanceAccepted:
        return self.c.send("POST", f"{BASE}/{ident}/restart", s.DbInstanceAccepted)

    def credentials(self, ident: str) -> s.Credentials:
        return self.c.get(f"{BASE}/{ident}/credentials", s.Credentials)

    def reset_password(self, ident: str) -> s.Credentials:
        return self.c.send("POST", f"{BASE}/{ident}/reset-password", s.Credentials)

    # databases
    def list_databases(self, ident: str) -> builtins.list[s.DatabaseOut]:
        return self.c.get_list(f"{BASE}/{ident}/databases", s.DatabaseOut)

    def create_database(self, ident: str, name: str) -> s.DatabaseOut:
        body = s.DatabaseCreate.model_construct(name=name)
        return self.c.send("POST", f"{BASE}/{ident}/databases", s.DatabaseOut, body)

    def delete_database(self, ident: str, name: str) -> None:
        self.c.request("DELETE", f"{BASE}/{ident}/databases/{name}")

    # users and grants
    def list_users(self, ident: str) -> builtins.list[s.DbUserOut]:
        return self.c.get_list(f"{BASE}/{ident}/users", s.DbUserOut)

    def create_user(
        self,
        ident: str,
        name: str,
        password: str | None = None,
        databases: builtins.list[str] | None = None,
    ) -> s.DbUserCreated:
        body = s.DbUserCreate.model_construct(
            name=name, password=password, databases=databases or []
        )
        return self.c.send("POST", f"{BASE}/{ident}/users", s.DbUserCreated, body)

    def delete_user(self, ident: str, name: str) -> None:
        self.c.request("DELETE", f"{BASE}/{ident}/users/{name}")

    def set_password(self, ident: str, name: str, password: str | None = None) -> s.Credentials:
        body = s.PasswordChange.model_construct(password=password)
        return self.c.send("PUT", f"{BASE}/{ident}/users/{name}/password", s.Credentials, body)

    def grant(self, ident: str, user: str, database: str) -> s.DbUserOut:
        body = s.GrantRequest.model_construct(database=database)
        return self.c.send("POST", f"{BASE}/{ident}/users/{user}/grants", s.DbUserOut, body)

    def revoke(self, ident: str, user: str, database: str) -> s.DbUserOut:
        return self.c.send("DELETE", f"{BASE}/{ident}/users/{user}/grants/{database}", s.DbUserOut)
