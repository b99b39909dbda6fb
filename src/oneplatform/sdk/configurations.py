"""The SDK's configuration groups: engine parameters attached to database instances."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

from oneplatform.schemas.configurations import (
    ConfigurationAttach,
    ConfigurationCreate,
    ConfigurationOut,
    ConfigurationUpdate,
    ParameterOut,
)
from oneplatform.schemas.databases import DbInstanceOut

if TYPE_CHECKING:
    from oneplatform.sdk.client import Client

BASE = "/v1/db/configurations"


class Configurations:
    def __init__(self, client: Client) -> None:
        self.c = client

    def list(self) -> builtins.list[ConfigurationOut]:
        return self.c.get_list(BASE, ConfigurationOut)

    def get(self, ident: str) -> ConfigurationOut:
        return self.c.get(f"{BASE}/{ident}", ConfigurationOut)

    def create(
        self,
        name: str,
        values: dict[str, str],
        datastore: str = "postgresql",
        version: str | None = None,
        description: str = "",
    ) -> ConfigurationOut:
        body = ConfigurationCreate.model_construct(
            name=name, values=values, datastore=datastore, version=version, description=description
        )
        return self.c.send("POST", BASE, ConfigurationOut, body)

    def update(
        self,
        ident: str,
        values: dict[str, str] | None = None,
        unset: builtins.list[str] | None = None,
        description: str | None = None,
    ) -> ConfigurationOut:
        """Merge ``values`` in and take ``unset`` out; the databases using the group get
        the result at once."""
        body = ConfigurationUpdate.model_construct(
            values=values or {}, unset=unset or [], description=description
        )
        return self.c.send("PATCH", f"{BASE}/{ident}", ConfigurationOut, body)

    def delete(self, ident: str) -> None:
        self.c.request("DELETE", f"{BASE}/{ident}")

    def attach(self, db: str, configuration: str) -> DbInstanceOut:
        body = ConfigurationAttach.model_construct(configuration=configuration)
        return self.c.send("PUT", f"/v1/db/instances/{db}/configuration", DbInstanceOut, body)

    def detach(self, db: str) -> DbInstanceOut:
        return self.c.send("DELETE", f"/v1/db/instances/{db}/configuration", DbInstanceOut)

    def parameters(self, datastore: str, version: str) -> builtins.list[ParameterOut]:
        return self.c.get_list(
            f"/v1/datastores/{datastore}/versions/{version}/parameters", ParameterOut
        )
