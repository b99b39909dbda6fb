"""Clusters: container pools composed from the platform's own VMs."""

from __future__ import annotations

import datetime as dt

from pydantic import Field

from oneplatform.schemas.base import CatalogName, Request, ResourceName, Response
from oneplatform.schemas.operations import OperationOut

MAX_NODES = 16


class ClusterCreate(Request):
    name: ResourceName = Field(
        max_length=40,
        description="The cluster's name, which also names its pool and its flavor "
        "(`<name>.small`): unique on the platform.",
    )
    node_flavor: CatalogName = Field(
        description="The flavor of each node, which runs Podman: a VM or bare-metal flavor "
        "(vm.small, baremetal.small)."
    )
    size: int = Field(default=1, ge=1, le=MAX_NODES, description="How many nodes.")
    public_key: str | None = Field(
        default=None,
        max_length=16384,
        description="The owner's SSH public key (OpenSSH format), authorized on every node; "
        "without it, `connect` gives a key the platform made.",
    )


class ClusterResize(Request):
    size: int = Field(ge=1, le=MAX_NODES, description="How many nodes the cluster has after.")
    remove: list[str] = Field(
        default_factory=list,
        max_length=MAX_NODES,
        description="On a shrink, the nodes to drain (as many as it removes); default: "
        "failed or unregistered ones first, then the newest. Databases there move first.",
    )


class ClusterNodeOut(Response):
    name: str
    status: str
    instance_id: str
    host: str | None = None
    ssh_port: int | None = None
    port_range_start: int | None = None
    port_range_end: int | None = None


class ClusterOut(Response):
    id: str
    name: str
    status: str
    status_message: str = ""
    node_flavor: str
    size: int
    pool: str | None = None
    flavor: str | None = None
    nodes: list[ClusterNodeOut] = []
    created_at: dt.datetime


class ClusterAccepted(Response):
    operation: OperationOut
    cluster: ClusterOut


class ClusterConnection(Response):
    """One node's Podman, for ``podman --url URL --identity IDENTITY_FILE``."""

    node: str
    url: str
    known_hosts: str = Field(
        description="The node's SSH host key as a known_hosts line: the only key it presents "
        "(the platform made it); add it to ~/.ssh/known_hosts before connecting."
    )
    identity_file: str | None = Field(
        default=None,
        description="The private key to use: the one the platform made for the cluster, or "
        "null when the owner gave a public key (then the owner's own).",
    )
