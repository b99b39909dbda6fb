"""The operation kinds that build, grow, drain and remove clusters.

A node is a compute instance of the owner's project with its own ``instance.create`` (placed
and enqueued by the request, :mod:`oneplatform.clusters.service`); these steps wait for the
node instances, register each as a host of the cluster's pool once its Podman answers over
SSH, delete drained nodes, and retire what a deleted cluster leaves.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from oneplatform.clusters import keys
from oneplatform.clusters.states import CLUSTER_NODES, CLUSTERS, ClusterStatus, NodeStatus
from oneplatform.compute.drivers import driver_for
from oneplatform.compute.drivers.base import HostInventory
from oneplatform.compute.drivers.ssh import known_host_line, ssh_target
from oneplatform.compute.hosts import host_ref
from oneplatform.compute.instances import request_delete
from oneplatform.compute.states import InstanceStatus
from oneplatform.errors import BackendError, NotYet, PlatformError
from oneplatform.ops.engine import StepContext
from oneplatform.ops.kinds import Intent, OperationStatus
from oneplatform.ops.steps import (
    become,
    check_not_superseded,
    deadline,
    define,
    fail_resource,
    wait_for_others,
)
from oneplatform.secrets import box_for
from oneplatform.store.models import (
    Cluster,
    ClusterNode,
    Flavor,
    Host,
    Instance,
    Operation,
    Pool,
    PortAllocation,
)

PODMAN_SOCKET = "/run/podman/podman.sock"
NODE_BUILD_WAIT_S = 3600.0  # a first build of the podman-host image, then a TCG boot
PODMAN_ANSWER_WAIT_S = 600.0
RETIRED_PREFIX = "retired-"


def node_url(ssh_port: int) -> str:
    """The ``podman --url`` of a node whose sshd is forwarded to ``ssh_port`` here."""
    return f"ssh://root@127.0.0.1:{ssh_port}{PODMAN_SOCKET}"


def node_host_settings(host_key: str) -> dict[str, Any]:
    """A node host's own settings: the host key its sshd presents, the one trusted."""
    return {"host_key": host_key} if host_key else {}


def known_hosts_line(node: ClusterNode) -> str:
    """``[127.0.0.1]:PORT TYPE KEY``: the node's host key as the owner's known_hosts takes it."""
    target = ssh_target(node_url(int(node.ssh_port or 0)))
    assert target is not None
    return known_host_line(target, node.host_key).strip() if node.host_key else ""


def live_nodes(session: Session, cluster_id: str) -> list[ClusterNode]:
    return list(
        session.scalars(
            select(ClusterNode)
            .where(ClusterNode.cluster_id == cluster_id, ClusterNode.deleted_at.is_(None))
            .order_by(ClusterNode.created_at, ClusterNode.name)
        )
    )


def load_cluster(session: Session, ctx: StepContext) -> Cluster:
    return session.get_one(Cluster, ctx.resource_id)


# -- building ----------------------------------------------------------------------------------
def step_wait_nodes(ctx: StepContext) -> None:
    """Wait until every building node's instance is ACTIVE; a node whose instance failed
    fails the operation (the node is ERROR, its message the instance's)."""
    pending, failed = [], []
    with ctx.store.session() as session:
        cluster = load_cluster(session, ctx)
        check_not_superseded(ctx, CLUSTERS, cluster)
        for node in live_nodes(session, cluster.id):
            if node.status != NodeStatus.BUILD.value:
                continue
            instance = session.get_one(Instance, node.instance_id)
            if instance.status == InstanceStatus.ACTIVE.value:
                continue
            if instance.status in (
                InstanceStatus.ERROR.value,
                InstanceStatus.DELETING.value,
                InstanceStatus.DELETED.value,
            ):
                failed.append(
                    (
                        node.id,
                        f"node {node.name}: instance {instance.status}: {instance.status_message}",
                    )
                )
            else:
                pending.append(node.name)
    if failed:
        with ctx.transaction() as session:
            for node_id, _message in failed:
                CLUSTER_NODES.move(session, session.get_one(ClusterNode, node_id), NodeStatus.ERROR)
        raise PlatformError("; ".join(m for _, m in failed), code="node_failed")
    if pending:
        deadline(ctx, f"node(s) {', '.join(pending)} starting", NODE_BUILD_WAIT_S)
        raise NotYet(f"waiting for node(s) {', '.join(pending)}", retry_after=3.0)


def step_register(ctx: StepContext) -> None:
    """Register every built node as a host of the cluster's pool, once its Podman answers
    over SSH (its inventory is what the node's Podman reports)."""
    with ctx.store.session() as session:
        cluster = load_cluster(session, ctx)
        check_not_superseded(ctx, CLUSTERS, cluster)
        pool = session.get_one(Pool, cluster.pool_id)
        waiting = [
            (n.id, n.name, int(n.ssh_port or 0), n.host_key)
            for n in live_nodes(session, cluster.id)
            if n.status == NodeStatus.BUILD.value and n.host_id is None
        ]
        private = box_for(ctx.settings).decrypt(cluster.key_enc)
        probe_pool = Pool(
            name=pool.name, compute_type=pool.compute_type, settings=dict(pool.settings)
        )
    identity = str(keys.write_identity(ctx.settings, ctx.resource_id, private))
    for node_id, name, ssh_port, host_key in waiting:
        probe = Host(
            id="probe",
            name=name,
            uri=node_url(ssh_port),
            bind_address="127.0.0.1",
            settings={"identity_file": identity, **node_host_settings(host_key)},
        )
        try:
            inventory = driver_for(host_ref(probe, probe_pool)).inventory()
        except BackendError as err:
            deadline(ctx, f"the Podman of node {name} answering", PODMAN_ANSWER_WAIT_S)
            raise NotYet(f"node {name}: {err.message}", retry_after=2.0) from None
        _add_host(ctx, node_id, inventory)


def _add_host(ctx: StepContext, node_id: str, inventory: HostInventory) -> None:
    with ctx.transaction() as session:
        node = session.get_one(ClusterNode, node_id)
        cluster = session.get_one(Cluster, node.cluster_id)
        pool = session.get_one(Pool, cluster.pool_id)
        if session.scalars(select(Host.id).where(Host.name == node.name)).first():
            raise PlatformError(
                f"a host named {node.name!r} already exists: node {node.name} cannot be registered",
                code="host_exists",
            )
        host = Host(
            name=node.name,
            pool_id=pool.id,
            compute_type=pool.compute_type,
            project_id=cluster.project_id,
            uri=node_url(int(node.ssh_port or 0)),
            # Its ports are this machine's forwards to the node: a machine of their own.
            machine=f"cluster-node-{node.instance_id}",
            bind_address="127.0.0.1",
            vcpus=inventory.vcpus,
            ram_mb=inventory.ram_mb,
            disk_gb=inventory.disk_gb,
            port_range_start=int(node.port_range_start or 0),
            port_range_end=int(node.port_range_end or 0),
            settings=node_host_settings(node.host_key),
        )
        session.add(host)
        session.flush()
        node.host_id = host.id
        CLUSTER_NODES.move(session, node, NodeStatus.ACTIVE)


# -- draining and removing -----------------------------------------------------------------
MOVES_WAIT_S = 3600.0  # each move bounds its own steps; a backstop past them


def step_wait_moves(ctx: StepContext) -> None:
    """Wait for the moves off the draining nodes (``moves``: their operations) and for every
    instance there to be gone (a moved primary's former compute is deleted last)."""
    with ctx.store.session() as session:
        moves = [session.get_one(Operation, op_id) for op_id in ctx.params.get("moves", [])]
        failed = [
            f"{op.kind}: {op.error_message}"
            for op in moves
            if op.status == OperationStatus.FAILED.value
        ]
    if failed:
        undo_drain(ctx)
        raise PlatformError(
            "moving off the drained node(s) failed: "
            + "; ".join(failed)
            + " (the databases not moved stay where they were; the nodes are back)",
            code="move_failed",
        )
    with ctx.store.session() as session:
        cluster = load_cluster(session, ctx)
        moves = [session.get_one(Operation, op_id) for op_id in ctx.params.get("moves", [])]
        host_ids = [
            n.host_id
            for n in live_nodes(session, cluster.id)
            if n.status == NodeStatus.DRAINING.value and n.host_id
        ]
        left = session.scalars(
            select(Instance.name).where(
                Instance.host_id.in_(host_ids), Instance.deleted_at.is_(None)
            )
        ).all()
        moving = [op for op in moves if op.status != OperationStatus.SUCCEEDED.value]
    if moving or left:
        deadline(ctx, "the moves off the drained node(s)", MOVES_WAIT_S)
        raise NotYet(
            f"waiting for {len(moving)} move(s) off the drained node(s)"
            + (f"; still there: {', '.join(left)}" if left else ""),
            retry_after=3.0,
        )


def undo_drain(ctx: StepContext) -> None:
    """The draining nodes back in the pool (their hosts enabled, the cluster's size as
    before): a move off them failed, so the shrink does not go on."""
    with ctx.transaction() as session:
        cluster = load_cluster(session, ctx)
        for node in live_nodes(session, cluster.id):
            if node.status != NodeStatus.DRAINING.value or not node.host_id:
                continue
            session.get_one(Host, node.host_id).enabled = True
            CLUSTER_NODES.move(session, node, NodeStatus.ACTIVE)
            cluster.size += 1


def step_remove_nodes(ctx: StepContext) -> None:
    """Delete the instances of the draining nodes (each with its own operation)."""
    with ctx.transaction() as session:
        cluster = load_cluster(session, ctx)
        for node in live_nodes(session, cluster.id):
            if node.status == NodeStatus.DRAINING.value:
                request_delete(
                    session, session.get_one(Instance, node.instance_id), cluster.project_id
                )


def step_wait_removed(ctx: StepContext) -> None:
    """Wait until the draining nodes' instances are deleted; then retire their hosts."""
    pending = []
    with ctx.transaction() as session:
        cluster = load_cluster(session, ctx)
        for node in live_nodes(session, cluster.id):
            if node.status != NodeStatus.DRAINING.value:
                continue
            instance = session.get_one(Instance, node.instance_id)
            if instance.status == InstanceStatus.ERROR.value:
                raise PlatformError(
                    f"node {node.name}: deleting its instance failed: {instance.status_message}",
                    code="node_failed",
                )
            if instance.status != InstanceStatus.DELETED.value:
                pending.append(node.name)
                continue
            if node.host_id:
                retire_host(session, session.get_one(Host, node.host_id))
            CLUSTER_NODES.move(session, node, NodeStatus.DELETED)
    if pending:
        deadline(ctx, f"node(s) {', '.join(pending)} deleted")
        raise NotYet(f"waiting for node(s) {', '.join(pending)} to be deleted", retry_after=2.0)


def retire_host(session: Session, host: Host) -> None:
    """Remove a drained node's host; one that instances (deleted ones) still name is kept,
    disabled and renamed, so its name is free again."""
    used = session.scalar(
        select(func.count()).select_from(Instance).where(Instance.host_id == host.id)
    )
    held = session.scalar(
        select(func.count()).select_from(PortAllocation).where(PortAllocation.host_id == host.id)
    )
    nodes = session.scalars(select(ClusterNode).where(ClusterNode.host_id == host.id))
    if used or held:
        host.enabled = False
        host.name = f"{RETIRED_PREFIX}{host.id}"
        return
    for node in nodes:
        node.host_id = None
    session.flush()
    session.delete(host)


def step_retire(ctx: StepContext) -> None:
    """A deleted cluster's flavor is no project's to use any more and its pool's name is
    free again (both stay for the records that name them); its key file goes."""
    with ctx.transaction() as session:
        cluster = load_cluster(session, ctx)
        if cluster.flavor_id:
            flavor = session.get_one(Flavor, cluster.flavor_id)
            flavor.pool_id = None
            flavor.name = f"{RETIRED_PREFIX}{flavor.id}"
        if cluster.pool_id:
            pool = session.get_one(Pool, cluster.pool_id)
            pool.name = f"{RETIRED_PREFIX}{pool.id}"
    keys.remove_identity(ctx.settings, ctx.resource_id)


FAIL = fail_resource(CLUSTERS, load_cluster)
CLUSTER_CREATE = define(
    "cluster.create",
    "cluster",
    Intent.CREATE,
    ("wait_nodes", step_wait_nodes),
    ("register", step_register),
    ("finish", become(CLUSTERS, load_cluster, ClusterStatus.ACTIVE)),
    on_failure=FAIL,
    description="Wait for the nodes' instances (podman-host image) and register each as a "
    "host of the cluster's pool once its Podman answers over SSH.",
)
CLUSTER_RESIZE = define(
    "cluster.resize",
    "cluster",
    Intent.ACTION,
    ("wait_nodes", step_wait_nodes),
    ("register", step_register),
    ("wait_moves", step_wait_moves),
    ("remove_nodes", step_remove_nodes),
    ("wait_removed", step_wait_removed),
    ("finish", become(CLUSTERS, load_cluster, ClusterStatus.ACTIVE)),
    on_failure=FAIL,
    description="Build and register added nodes, or move the databases off drained ones, "
    "then delete them and their hosts.",
)
CLUSTER_DELETE = define(
    "cluster.delete",
    "cluster",
    Intent.DELETE,
    ("wait_others", wait_for_others),
    ("remove_nodes", step_remove_nodes),
    ("wait_removed", step_wait_removed),
    ("retire", step_retire),
    ("finish", become(CLUSTERS, load_cluster, ClusterStatus.DELETED, "deleted")),
    on_failure=FAIL,
    description="Delete every node (refused up front while instances live on them), then "
    "retire the cluster's hosts, flavor and pool.",
)
