"""The SDK's clusters: ``client.clusters``."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

from oneplatform.schemas.clusters import (
    ClusterAccepted,
    ClusterConnection,
    ClusterCreate,
    ClusterOut,
    ClusterResize,
)

if TYPE_CHECKING:
    from oneplatform.sdk.client import Client


class Clusters:
    def __init__(self, client: Client) -> None:
        self.c = client

    def list(self) -> builtins.list[ClusterOut]:
        return self.c.get_list("/v1/clusters", ClusterOut)

    def get(self, ident: str) -> ClusterOut:
        return self.c.get(f"/v1/clusters/{ident}", ClusterOut)

    def create(
        self, name: str, node_flavor: str, size: int = 1, public_key: str | None = None
    ) -> ClusterAccepted:
        body = ClusterCreate.model_construct(
            name=name, node_flavor=node_flavor, size=size, public_key=public_key
        )
        return self.c.send("POST", "/v1/clusters", ClusterAccepted, body)

    def connect(self, ident: str) -> builtins.list[ClusterConnection]:
        return self.c.get_list(f"/v1/clusters/{ident}/connect", ClusterConnection)

    def resize(
        self, ident: str, size: int, remove: builtins.list[str] | None = None
    ) -> ClusterAccepted:
        """Grow or shrink to ``size`` nodes; on a shrink, ``remove`` names the nodes to
        drain (their databases move first)."""
        body = ClusterResize.model_construct(size=size, remove=list(remove or []))
        return self.c.send("POST", f"/v1/clusters/{ident}/resize", ClusterAccepted, body)

    def delete(self, ident: str) -> ClusterAccepted:
        return self.c.send("DELETE", f"/v1/clusters/{ident}", ClusterAccepted)
