"""Clusters: create, read, connect, resize, delete. Writes desired state plus an operation
and returns; the steps are in :mod:`oneplatform.clusters.operations`."""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oneplatform.clusters import keys
from oneplatform.clusters import operations as ops
from oneplatform.clusters.operations import live_nodes
from oneplatform.clusters.states import CLUSTER_NODES, CLUSTERS, ClusterStatus, NodeStatus
from oneplatform.compute.catalog import BUILTIN_POOLS, flavor_by_name
from oneplatform.compute.instances import place_instance
from oneplatform.compute.operations import host_routes
from oneplatform.compute.ports import LOCAL
from oneplatform.compute.types import BlockFn, spec_for
from oneplatform.config import Settings
from oneplatform.dbaas import replicas
from oneplatform.dbaas.endpoints import PRIMARY
from oneplatform.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from oneplatform.hostsvc.objectstore import GUEST_FORWARD_ADDRESS
from oneplatform.iam import Caller
from oneplatform.ops.engine import enqueue
from oneplatform.ops.service import to_out
from oneplatform.schemas.clusters import (
    ClusterAccepted,
    ClusterConnection,
    ClusterCreate,
    ClusterNodeOut,
    ClusterOut,
    ClusterResize,
)
from oneplatform.schemas.compute import ComputeType
from oneplatform.secrets import box_for
from oneplatform.store.db import Store
from oneplatform.store.models import (
    Cluster,
    ClusterNode,
    DbInstance,
    DbMember,
    Flavor,
    Host,
    Instance,
    Pool,
    PortAllocation,
    new_id,
)

NODE_IMAGE = "podman-host"
# Ports forwarded to each node for its containers (two per database: engine and agent).
NODE_PORTS = 20
# The cluster's flavor: what one database (or container) on a node takes.
FLAVOR_VCPUS, FLAVOR_RAM_MB, FLAVOR_DISK_GB = 1, 512, 1
# A node's containers publish on the node's own address, which the forwards lead to; its
# containers.conf says runc (podman --url takes no --runtime).
NODE_POOL_SETTINGS: dict[str, str] = {"publish_address": "0.0.0.0"}
LIVE_NODES = (NodeStatus.BUILD.value, NodeStatus.ACTIVE.value, NodeStatus.ERROR.value)


# -- reading ---------------------------------------------------------------------------------
def find_cluster(session: Session, caller: Caller, ident: str) -> Cluster:
    """The caller's project's live cluster by id or name; 404 for any other project's."""
    cluster = session.scalars(
        select(Cluster).where(
            Cluster.project_id == caller.project_id,
            Cluster.deleted_at.is_(None),
            (Cluster.id == ident) | (Cluster.name == ident),
        )
    ).first()
    if cluster is None:
        raise NotFound(f"cluster {ident!r} not found", code="cluster_not_found")
    return cluster


def to_out_cluster(session: Session, cluster: Cluster) -> ClusterOut:
    pool = session.get(Pool, cluster.pool_id) if cluster.pool_id else None
    flavor = session.get(Flavor, cluster.flavor_id) if cluster.flavor_id else None
    nodes = []
    for node in live_nodes(session, cluster.id):
        host = session.get(Host, node.host_id) if node.host_id else None
        nodes.append(
            ClusterNodeOut(
                name=node.name,
                status=node.status,
                instance_id=node.instance_id,
                host=host.name if host else None,
                ssh_port=node.ssh_port,
                port_range_start=node.port_range_start,
                port_range_end=node.port_range_end,
            )
        )
    return ClusterOut(
        id=cluster.id,
        name=cluster.name,
        status=cluster.status,
        status_message=cluster.status_message,
        node_flavor=session.get_one(Flavor, cluster.node_flavor_id).name,
        size=cluster.size,
        pool=pool.name if pool and cluster.deleted_at is None else None,
        flavor=flavor.name if flavor and cluster.deleted_at is None else None,
        nodes=nodes,
        created_at=cluster.created_at,
    )


def list_clusters(store: Store, caller: Caller) -> list[ClusterOut]:
    with store.session() as session:
        rows = session.scalars(
            select(Cluster)
            .where(Cluster.project_id == caller.project_id, Cluster.deleted_at.is_(None))
            .order_by(Cluster.created_at)
        )
        return [to_out_cluster(session, c) for c in rows]


def get_cluster(store: Store, caller: Caller, ident: str) -> ClusterOut:
    with store.session() as session:
        return to_out_cluster(session, find_cluster(session, caller, ident))


def connect(
    store: Store, settings: Settings, caller: Caller, ident: str
) -> list[ClusterConnection]:
    """How the owner reaches each registered node's Podman: ``podman --url URL --identity
    FILE``. The platform's key file is written on this machine when it is the one to use."""
    caller.require_writer("connect to a cluster's nodes")
    with store.session() as session:
        cluster = find_cluster(session, caller, ident)
        ready = [n for n in live_nodes(session, cluster.id) if n.host_id and n.ssh_port]
        if not ready:
            raise Conflict(
                f"cluster {cluster.name!r} has no node ready yet ({cluster.status})",
                code="invalid_state",
                status=cluster.status,
            )
        identity = None
        if not cluster.public_key:
            private = box_for(settings).decrypt(cluster.key_enc)
            identity = str(keys.write_identity(settings, cluster.id, private))
        return [
            ClusterConnection(
                node=n.name,
                url=ops.node_url(int(n.ssh_port or 0)),
                identity_file=identity,
                known_hosts=ops.known_hosts_line(n),
            )
            for n in ready
        ]


# -- creating --------------------------------------------------------------------------------
def create_cluster(
    store: Store, settings: Settings, caller: Caller, req: ClusterCreate
) -> ClusterAccepted:
    """The cluster, its pool, its flavor and its nodes' instances in one transaction: any
    refusal (a taken name, no VM host left, the quota) leaves nothing behind."""
    public_key = keys.checked_public_key(req.public_key) if req.public_key else None
    private = keys.new_private_key()
    cluster_id = new_id()
    try:
        with store.session() as session:
            node_flavor = _node_flavor(session, caller, req.node_flavor)
            _check_names_free(session, req.name)
            pool = Pool(
                id=new_id(),
                name=req.name,
                compute_type=ComputeType.CONTAINER.value,
                project_id=caller.project_id,
                # its key is written on the machine that drives a node (compute/identities)
                settings={**NODE_POOL_SETTINGS, "cluster_id": cluster_id},
            )
            flavor = Flavor(
                id=new_id(),
                name=flavor_name(req.name),
                compute_type=ComputeType.CONTAINER.value,
                vcpus=FLAVOR_VCPUS,
                ram_mb=FLAVOR_RAM_MB,
                disk_gb=FLAVOR_DISK_GB,
                project_id=caller.project_id,
                pool_id=pool.id,
            )
            cluster = Cluster(
                id=cluster_id,
                project_id=caller.project_id,
                name=req.name,
                node_flavor_id=node_flavor.id,
                size=req.size,
                pool_id=pool.id,
                flavor_id=flavor.id,
                public_key=public_key,
                key_enc=box_for(settings).encrypt(private),
            )
            for row in (pool, flavor):  # in their order: no relationships tell the flush
                session.add(row)
                session.flush()
            CLUSTERS.created(session, cluster, f"{req.size} node(s) of {node_flavor.name}")
            session.add(cluster)
            session.flush()
            add_nodes(session, settings, cluster, private, req.size)
            op = enqueue(session, ops.CLUSTER_CREATE, cluster.id, caller.project_id)
            accepted = ClusterAccepted(
                operation=to_out(op), cluster=to_out_cluster(session, cluster)
            )
    except IntegrityError as err:
        raise AlreadyExists(
            f"a cluster, pool, flavor or instance named after {req.name!r} already exists",
            code="cluster_exists",
        ) from err
    return accepted


def flavor_name(cluster_name: str) -> str:
    return f"{cluster_name}.small"


def _node_flavor(session: Session, caller: Caller, name: str) -> Flavor:
    """A flavor of a compute type whose instances can be nodes: one that reaches a block of
    an instance's ports 1:1 (VMs: forwards of their own; bare metal: the node's network's)."""
    flavor = flavor_by_name(session, name, caller.project_id)
    if _block_of(flavor.compute_type) is None:
        raise Conflict(
            f"flavor {name!r} is for {flavor.compute_type}: a cluster's nodes are VMs or "
            "bare-metal nodes",
            code="node_flavor_not_supported",
            compute_type=flavor.compute_type,
        )
    return flavor


def _block_of(compute_type: str) -> BlockFn | None:
    return spec_for(compute_type).allocate_block


def reserved_names() -> frozenset[str]:
    """Names a cluster may not take, though nothing holds them yet: the compute types (their
    built-in flavors are ``<type>.small`` …, made once their pool is ready) and the built-in
    pools."""
    return frozenset({ct.value for ct in ComputeType}) | BUILTIN_POOLS


def _check_names_free(session: Session, name: str) -> None:
    if name in reserved_names():
        raise InvalidInput(
            f"{name!r} is a name the platform keeps for its own pools and flavors: pick "
            "another cluster name",
            code="cluster_name_reserved",
        )
    taken = (
        session.scalars(
            select(Cluster.id).where(Cluster.name == name, Cluster.deleted_at.is_(None))
        ).first()
        or session.scalars(select(Pool.id).where(Pool.name == name)).first()
        or session.scalars(select(Flavor.id).where(Flavor.name == flavor_name(name))).first()
    )
    if taken:
        raise AlreadyExists(
            f"the name {name!r} is taken (a cluster, or a pool or flavor {flavor_name(name)!r})",
            code="cluster_exists",
        )


def node_host_services(settings: Settings) -> dict[str, object]:
    """What a node forwards for its containers: the platform's host services (backup store,
    replication hub), which containers reach at the service address as on the platform's
    own host, on to the node's user-network forward of each (a VM's guestfwd)."""
    routes = host_routes(settings)
    return {
        "address": settings.service_address,
        "forward": GUEST_FORWARD_ADDRESS,
        "ports": sorted({r.port for r in routes}),
    }


def add_nodes(
    session: Session, settings: Settings, cluster: Cluster, private_key: str, count: int
) -> list[ClusterNode]:
    """Place ``count`` more node instances (each with its create operation), each with an
    SSH port and a block of forwarded ports for its containers."""
    flavor = session.get_one(Flavor, cluster.node_flavor_id)
    authorized = [keys.public_key_of(private_key, f"onep-cluster-{cluster.name}")]
    if cluster.public_key:
        authorized.append(cluster.public_key)
    used = {
        n.name
        for n in session.scalars(select(ClusterNode).where(ClusterNode.cluster_id == cluster.id))
    }
    made = []
    index = 0
    for _ in range(count):
        while f"{cluster.name}-{index}" in used:
            index += 1
        name = f"{cluster.name}-{index}"
        used.add(name)
        # The node's sshd presents this key, made here: the platform trusts it and no other
        # (never the key a node would make at its first boot, unseen).
        host_private = keys.new_private_key()
        bundle = json.dumps(
            {
                "authorized_keys": authorized,
                "host_key": host_private,
                "host_services": node_host_services(settings),
            }
        )
        instance, _op = place_instance(
            session,
            cluster.project_id,
            name,
            flavor,
            NODE_IMAGE,
            bundle_enc=box_for(settings).encrypt(bundle),
        )
        host = session.get_one(Host, instance.host_id)
        allocate = _block_of(flavor.compute_type)
        assert allocate is not None  # _node_flavor refused the others
        ssh = _reached_here(session, host, instance)  # its sshd: placed with the instance
        block = allocate(session, host, instance, NODE_PORTS)
        _reached_here(session, host, instance)  # and the block for its containers
        node = ClusterNode(
            id=new_id(),
            cluster_id=cluster.id,
            instance_id=instance.id,
            name=name,
            ssh_port=ssh,
            port_range_start=block.start,
            port_range_end=block.stop - 1,
            host_key=keys.public_key_of(host_private, name),
        )
        CLUSTER_NODES.created(session, node, f"instance {instance.name}")
        session.add(node)
        made.append(node)
    session.flush()
    return made


def _reached_here(session: Session, host: Host, instance: Instance) -> int:
    """The port of this machine the node's sshd is reached at; every port of a node must be
    on this machine (a VM host's forwards, a bare-metal node's port map to 127.0.0.1): the
    platform and the owner reach a node at 127.0.0.1."""
    rows = list(
        session.scalars(select(PortAllocation).where(PortAllocation.instance_id == instance.id))
    )
    elsewhere = sorted({r.machine for r in rows if r.machine != LOCAL})
    if elsewhere:
        raise Conflict(
            f"node {instance.name} would run on host {host.name!r}, whose ports are on "
            f"{', '.join(elsewhere)}: cluster nodes are reached through this machine's "
            "127.0.0.1 only (a local libvirt's forwards, a bare-metal node's port map to "
            "127.0.0.1)",
            code="node_host_remote",
        )
    return next(r.host_port for r in rows if r.name == "ssh")


# -- resizing and deleting -------------------------------------------------------------------
def resize_cluster(
    store: Store, settings: Settings, caller: Caller, ident: str, req: ClusterResize
) -> ClusterAccepted:
    """Add nodes, or drain some: those ``req.remove`` names, else failed or never registered
    ones first, then the newest. The databases on a drained node move to the nodes that
    stay first (the resize waits for them); any other instance there refuses the resize."""
    with store.session() as session:
        cluster = find_cluster(session, caller, ident)
        leaving = _leaving(session, cluster, req)
        members = _residents(session, cluster, leaving)
        db_ids = sorted({m.db_id for m in members})
    # the moves' preparation asks the databases' agents: outside the transaction below
    seeds = replicas.prepare_moves(store, settings, db_ids) if db_ids else {}
    with store.session() as session:
        cluster = find_cluster(session, caller, ident)
        _require_state(cluster, "resize", {ClusterStatus.ACTIVE, ClusterStatus.ERROR})
        nodes = [n for n in live_nodes(session, cluster.id) if n.status in LIVE_NODES]
        moves: list[str] = []
        if req.size > len(nodes):
            private = box_for(settings).decrypt(cluster.key_enc)
            add_nodes(session, settings, cluster, private, req.size - len(nodes))
            message = f"adding {req.size - len(nodes)} node(s)"
        else:
            leaving = _leaving(session, cluster, req)
            # the hosts' rows first (see _refuse_if_used), then off the scheduler, so the
            # members placed below land on the nodes that stay
            _lock_hosts(session, leaving)
            drain(session, leaving)
            session.flush()
            names = ", ".join(n.name for n in leaving)
            for member in _residents(session, cluster, leaving):
                if member.db_id not in seeds:  # came while the moves were prepared
                    raise Conflict(
                        f"a database came onto node(s) {names} while the resize was asked: "
                        "ask again",
                        code="cluster_busy",
                    )
                reason = f"moving off node(s) {names} (cluster {cluster.name} shrinks)"
                op = replicas.move_off(session, settings, member, seeds[member.db_id], reason)
                moves.append(op.id)
            message = f"draining {names}" + (f", {len(moves)} move(s) first" if moves else "")
        cluster.size = req.size
        CLUSTERS.move(session, cluster, ClusterStatus.RESIZE, message)
        op = enqueue(session, ops.CLUSTER_RESIZE, cluster.id, caller.project_id, {"moves": moves})
        return ClusterAccepted(operation=to_out(op), cluster=to_out_cluster(session, cluster))


def _leaving(session: Session, cluster: Cluster, req: ClusterResize) -> list[ClusterNode]:
    """The nodes a shrink drains ([] for a growth); refuses a resize that changes nothing
    and names of nodes to remove that do not fit it."""
    _require_state(cluster, "resize", {ClusterStatus.ACTIVE, ClusterStatus.ERROR})
    nodes = [n for n in live_nodes(session, cluster.id) if n.status in LIVE_NODES]
    if req.size == len(nodes):
        raise Conflict(
            f"cluster {cluster.name!r} has {len(nodes)} node(s) already",
            code="nothing_to_do",
        )
    if req.size > len(nodes):
        if req.remove:
            raise InvalidInput(
                "nodes to remove are named only when the cluster shrinks", code="invalid_input"
            )
        return []
    count = len(nodes) - req.size
    if not req.remove:
        return _drain_order(nodes)[:count]
    by_name = {n.name: n for n in nodes}
    unknown = sorted(set(req.remove) - set(by_name))
    if unknown:
        raise InvalidInput(
            f"cluster {cluster.name!r} has no node {', '.join(unknown)} (its nodes: "
            f"{', '.join(by_name)})",
            code="invalid_input",
        )
    if len(set(req.remove)) != count:
        raise InvalidInput(
            f"going from {len(nodes)} to {req.size} node(s) removes {count}: name "
            f"{count} node(s), not {len(set(req.remove))}",
            code="invalid_input",
        )
    return [by_name[name] for name in dict.fromkeys(req.remove)]


def _residents(session: Session, cluster: Cluster, nodes: list[ClusterNode]) -> list[DbMember]:
    """The database members living on ``nodes``, replicas first (a replica's replacement
    needs its database ACTIVE, which a primary's move is not); any other instance there
    refuses (409 cluster_in_use: it cannot move)."""
    host_ids = [n.host_id for n in nodes if n.host_id]
    if not host_ids:
        return []
    instances = session.scalars(
        select(Instance).where(Instance.host_id.in_(host_ids), Instance.deleted_at.is_(None))
    ).all()
    members = {
        m.instance_id: m
        for m in session.scalars(
            select(DbMember).where(
                DbMember.instance_id.in_([i.id for i in instances]),
                DbMember.deleted_at.is_(None),
            )
        )
    }
    others = sorted(i.name for i in instances if i.id not in members)
    if others:
        raise Conflict(
            f"cannot drain node(s) {', '.join(n.name for n in nodes if n.host_id)} of cluster "
            f"{cluster.name!r}: instance(s) {', '.join(others)} live there and cannot move; "
            "delete them first",
            code="cluster_in_use",
            residents=others,
        )
    return sorted(members.values(), key=lambda m: (m.role == PRIMARY, m.name))


def _lock_hosts(session: Session, nodes: list[ClusterNode]) -> None:
    host_ids = [n.host_id for n in nodes if n.host_id]
    if host_ids:
        session.execute(select(Host.id).where(Host.id.in_(host_ids)).with_for_update())


def delete_cluster(store: Store, settings: Settings, caller: Caller, ident: str) -> ClusterAccepted:
    """Refused while databases (or any instance) live on its nodes; else its nodes go, then
    its hosts, flavor and pool."""
    with store.session() as session:
        cluster = find_cluster(session, caller, ident)
        if CLUSTERS.state_of(cluster) is ClusterStatus.DELETING:
            raise Conflict(
                f"cluster {cluster.name!r} is already being deleted", code="invalid_state"
            )
        nodes = live_nodes(session, cluster.id)
        _refuse_if_used(session, cluster, nodes, "delete")
        drain(session, [n for n in nodes if n.status != NodeStatus.DRAINING.value])
        CLUSTERS.move(session, cluster, ClusterStatus.DELETING, "delete requested")
        op = enqueue(session, ops.CLUSTER_DELETE, cluster.id, caller.project_id)
        return ClusterAccepted(operation=to_out(op), cluster=to_out_cluster(session, cluster))


def _drain_order(nodes: list[ClusterNode]) -> list[ClusterNode]:
    """Which nodes a shrink takes first: failed or never registered ones, then the
    healthy ones, newest first (``nodes`` are in creation order)."""
    healthy = [n for n in nodes if n.status == NodeStatus.ACTIVE.value and n.host_id]
    broken = [n for n in nodes if n not in healthy]
    return broken[::-1] + healthy[::-1]


def drain(session: Session, nodes: list[ClusterNode]) -> None:
    """Take the nodes off the scheduler at once (their hosts disabled) and mark them."""
    for node in nodes:
        if node.host_id:
            session.get_one(Host, node.host_id).enabled = False
        CLUSTER_NODES.move(session, node, NodeStatus.DRAINING)


def _refuse_if_used(
    session: Session, cluster: Cluster, nodes: list[ClusterNode], action: str
) -> None:
    host_ids = [n.host_id for n in nodes if n.host_id]
    if not host_ids:
        return
    # The hosts' rows first (a placement claims its host's row, bumping its generation): a
    # placement on them that is under way commits before this reads who lives there, and
    # none starts until the drain, in this transaction, has disabled them.
    _lock_hosts(session, nodes)
    living = sorted(
        _resident_name(session, instance)
        for instance in session.scalars(
            select(Instance).where(Instance.host_id.in_(host_ids), Instance.deleted_at.is_(None))
        )
    )
    if living:
        raise Conflict(
            f"cannot {action} cluster {cluster.name!r}: {', '.join(living)} still on "
            f"its node(s) {', '.join(n.name for n in nodes if n.host_id)}; delete or move "
            "them first",
            code="cluster_in_use",
            residents=living,
        )


def _resident_name(session: Session, instance: Instance) -> str:
    """What the owner knows an instance on a node as: its database's name (a member's
    compute is the database service's), else the instance's."""
    db_name = session.scalars(
        select(DbInstance.name)
        .join(DbMember, DbMember.db_id == DbInstance.id)
        .where(DbMember.instance_id == instance.id)
    ).first()
    return f"database {db_name}" if db_name else f"instance {instance.name}"


def _require_state(cluster: Cluster, action: str, allowed: set[ClusterStatus]) -> None:
    current = CLUSTERS.state_of(cluster)
    if current not in allowed:
        raise Conflict(
            f"cannot {action} cluster {cluster.name!r} while it is {current.value}",
            code="invalid_state",
            status=current.value,
        )
