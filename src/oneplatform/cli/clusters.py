"""`onep cluster`: container pools composed from the platform's own VMs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from oneplatform.cli.output import (
    Format,
    OutputOpt,
    WideOpt,
    api_errors,
    emit,
    fail,
    wait_with_progress,
)
from oneplatform.schemas.clusters import ClusterAccepted
from oneplatform.sdk.client import Client, OperationFailed

cluster_app = typer.Typer(
    help="Clusters: your own container pool on VMs running Podman, with Podman's API open to you.",
    no_args_is_help=True,
)
CLUSTER_COLUMNS = ("name", "status", "node_flavor", "size", "flavor", "status_message")
NODE_COLUMNS = ("name", "status", "host", "ssh_port", "port_range_start", "port_range_end")
WaitOpt = Annotated[bool, typer.Option("--wait", "-w", help="Wait until the work is done.")]


def _finish(c: Client, accepted: ClusterAccepted, wait: bool, fmt: Format) -> None:
    if wait:
        try:
            # A first create builds the podman-host image and boots VMs or deploys nodes
            # (TCG: minutes).
            wait_with_progress(c, accepted.operation, quiet=False, timeout=3600.0)
        except OperationFailed as failed:
            raise fail(
                f"{failed.operation.kind} failed: {failed.message} [{failed.code}]"
            ) from None
        if accepted.operation.intent == "delete":
            return
        emit(c.clusters.get(accepted.cluster.id), fmt, CLUSTER_COLUMNS)
        return
    emit(accepted.cluster, fmt, CLUSTER_COLUMNS)


@cluster_app.command("create")
def cluster_create(
    name: str,
    node_flavor: Annotated[
        str, typer.Option(help="The flavor of each node (vm.small, baremetal.small)")
    ],
    size: Annotated[int, typer.Option(help="How many nodes")] = 1,
    public_key: Annotated[
        Path | None,
        typer.Option(
            help="Your SSH public key file, authorized on every node (else the "
            "platform makes a key for you)"
        ),
    ] = None,
    wait: WaitOpt = False,
    output: Format = OutputOpt,
) -> None:
    """Build SIZE nodes running Podman, register them as the hosts of your pool NAME, with
    the flavor NAME.small for databases there."""
    key = None
    if public_key is not None:
        try:
            key = public_key.read_text().strip()
        except OSError as err:
            raise fail(f"cannot read {public_key}: {err}") from None
    with Client.from_home() as c, api_errors():
        _finish(c, c.clusters.create(name, node_flavor, size, key), wait, output)


@cluster_app.command("list")
def cluster_list(output: Format = OutputOpt, wide: bool = WideOpt) -> None:
    with Client.from_home() as c, api_errors():
        emit(c.clusters.list(), output, CLUSTER_COLUMNS, wide=wide)


@cluster_app.command("show")
def cluster_show(name: str, output: Format = OutputOpt) -> None:
    """A cluster with its nodes."""
    with Client.from_home() as c, api_errors():
        cluster = c.clusters.get(name)
        if output is not Format.table:
            emit(cluster, output, CLUSTER_COLUMNS)
            return
        emit(cluster, output, ("id", *CLUSTER_COLUMNS, "pool"))
        emit(cluster.nodes, output, NODE_COLUMNS)


@cluster_app.command("connect")
def cluster_connect(name: str, output: Format = OutputOpt) -> None:
    """Each node's Podman: add its KNOWN_HOSTS line to ~/.ssh/known_hosts, then run
    `podman --url URL --identity IDENTITY_FILE ps` (any Podman command) against it."""
    with Client.from_home() as c, api_errors():
        emit(c.clusters.connect(name), output, ("node", "url", "identity_file", "known_hosts"))


@cluster_app.command("resize")
def cluster_resize(
    name: str,
    size: Annotated[int, typer.Option(help="How many nodes after the resize")],
    remove: Annotated[
        list[str] | None,
        typer.Option(
            "--remove",
            help="On a shrink, a node to drain (repeat it: as many as the shrink removes); "
            "default: failed ones, then the newest.",
        ),
    ] = None,
    wait: WaitOpt = False,
    output: Format = OutputOpt,
) -> None:
    """Add nodes, or drain some: the databases on a drained node move to the nodes that stay
    first (a replica there, a switchover, the former goes); any other instance on it refuses
    the shrink."""
    with Client.from_home() as c, api_errors():
        _finish(c, c.clusters.resize(name, size, remove=remove or []), wait, output)


@cluster_app.command("delete")
def cluster_delete(name: str, wait: WaitOpt = False, output: Format = OutputOpt) -> None:
    """Delete the cluster's nodes, pool and flavor (refused while databases live on it)."""
    with Client.from_home() as c, api_errors():
        _finish(c, c.clusters.delete(name), wait, output)
