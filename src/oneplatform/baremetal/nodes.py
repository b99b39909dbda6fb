"""Nodes: enroll (admin), list, show, manage/inspect/provide, power."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oneplatform.baremetal import operations as ops
from oneplatform.baremetal.bmc import bmc_protocols
from oneplatform.baremetal.reach import find_node, node_driver
from oneplatform.baremetal.states import ACTIONS, NODES, NodeState, move_node
from oneplatform.config import Settings
from oneplatform.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from oneplatform.iam import Caller
from oneplatform.ops.engine import enqueue
from oneplatform.ops.service import to_out
from oneplatform.schemas.compute import ComputeType
from oneplatform.schemas.nodes import NodeAccepted, NodeEnroll, NodeOut, ProvisioningNic
from oneplatform.secrets import box_for
from oneplatform.store.db import Store
from oneplatform.store.models import Host, Instance, Node, Pool, new_id


# -- the API ----------------------------------------------------------------------------------
def to_out_node(session: Session, node: Node) -> NodeOut:
    pool = session.get_one(Pool, node.pool_id)
    instance = session.get(Instance, node.instance_id) if node.instance_id else None
    return NodeOut(
        id=node.id,
        name=node.name,
        state=node.state,
        target_state=node.target_state,
        power_state=node.power_state,
        pool=pool.name,
        instance=instance.name if instance else None,
        last_error=node.last_error,
        bmc_address=node.bmc_address,
        bmc_system_id=node.bmc_system_id,
        inventory=dict(node.inventory or {}),
        provisioning=(
            ProvisioningNic.model_validate(node.provisioning) if node.provisioning else None
        ),
        created_at=node.created_at,
        updated_at=node.updated_at,
    )


def list_nodes(store: Store, caller: Caller) -> list[NodeOut]:
    caller.require_admin()
    with store.session() as session:
        return [to_out_node(session, n) for n in session.scalars(select(Node).order_by(Node.name))]


def get_node(store: Store, caller: Caller, ident: str) -> NodeOut:
    caller.require_admin()
    with store.session() as session:
        return to_out_node(session, find_node(session, ident))


def enroll(store: Store, settings: Settings, caller: Caller, req: NodeEnroll) -> NodeAccepted:
    """Record the node and its host (which takes instances only while the node is
    available); verify, inspect and (``provide``) clean it."""
    caller.require_admin()
    if req.bmc_protocol not in bmc_protocols():
        raise InvalidInput(
            f"BMC protocol {req.bmc_protocol!r} is not supported "
            f"(supported: {', '.join(bmc_protocols())})",
            code="bmc_protocol_not_supported",
        )
    try:
        with store.session() as session:
            pool = _baremetal_pool(session, req.pool)
            if session.scalars(select(Node).where(Node.name == req.name)).first():
                raise AlreadyExists(f"node {req.name!r} already exists", code="node_exists")
            node_id = new_id()
            host = Host(
                name=req.name,
                pool_id=pool.id,
                uri=f"node://{node_id}",
                machine=node_id,  # its ports are where its port map says
                bind_address="127.0.0.1",
                vcpus=0,
                ram_mb=0,
                disk_gb=0,
                traits=[],
                zone=req.zone,
                rack=req.rack,
                enabled=False,
                cpu_allocation_ratio=1.0,
                ram_allocation_ratio=1.0,
            )
            session.add(host)
            session.flush()
            node = Node(
                id=node_id,
                name=req.name,
                pool_id=pool.id,
                host_id=host.id,
                bmc_protocol=req.bmc_protocol,
                bmc_address=req.bmc_address,
                bmc_system_id=req.bmc_system_id,
                bmc_username=req.bmc_username,
                bmc_password_enc=box_for(settings).encrypt(req.bmc_password)
                if req.bmc_password
                else "",
                port_map={k: v.model_dump(mode="json") for k, v in req.port_map.items()},
                provisioning=req.provisioning.model_dump(mode="json") if req.provisioning else {},
                target_state=(
                    NodeState.AVAILABLE.value if req.provide else NodeState.MANAGEABLE.value
                ),
            )
            NODES.created(session, node, "enrolled")
            session.add(node)
            kind = ops.NODE_ENROLL_PROVIDE if req.provide else ops.NODE_ENROLL
            op = enqueue(session, kind, node.id, None)
            return NodeAccepted(operation=to_out(op), node=to_out_node(session, node))
    except IntegrityError:
        raise AlreadyExists(
            f"node or host {req.name!r} already exists", code="node_exists"
        ) from None


def _baremetal_pool(session: Session, name: str) -> Pool:
    pool = session.scalars(select(Pool).where(Pool.name == name)).first()
    if pool is None:
        raise NotFound(f"pool {name!r} not found", code="pool_not_found")
    if pool.compute_type != ComputeType.BAREMETAL.value:
        raise InvalidInput(f"pool {name!r} is not a bare-metal pool")
    return pool


def act(store: Store, caller: Caller, ident: str, action: str) -> NodeAccepted:
    """manage (verify the BMC), inspect, provide (clean, then available)."""
    caller.require_admin()
    allowed, first = ACTIONS[action]
    with store.session() as session:
        node = find_node(session, ident)
        state = NODES.state_of(node)
        if state not in allowed:
            raise Conflict(
                f"cannot {action} node {node.name!r} in state {state.value!r} "
                f"(allowed from: {', '.join(sorted(s.value for s in allowed))})",
                code="invalid_state",
            )
        if node.instance_id:
            raise Conflict(f"node {node.name!r} carries an instance", code="invalid_state")
        move_node(session, node, first, f"{action} requested")
        kind = {"manage": ops.NODE_VERIFY, "inspect": ops.NODE_INSPECT, "provide": ops.NODE_CLEAN}[
            action
        ]
        op = enqueue(session, kind, node.id, None)
        return NodeAccepted(operation=to_out(op), node=to_out_node(session, node))


def power(store: Store, settings: Settings, caller: Caller, ident: str, action: str) -> NodeOut:
    """Switch power through the node's driver at once (refused while an operation drives
    the node). As in Ironic, ``off`` and ``reboot`` are hard: a node may have no OS to ask."""
    caller.require_admin()
    with store.session() as session:
        node = find_node(session, ident)
        if not NODES.is_stable(NODES.state_of(node)):
            raise Conflict(
                f"node {node.name!r} is {node.state}: its operation owns the power",
                code="invalid_state",
            )
        driver = node_driver(session, settings, node)
        instance_id = node.instance_id or node.id
    if action == "on":
        driver.power_on()
    elif action == "off":
        driver.power_off()
    else:
        driver.force_reboot(instance_id)
    state = driver.power_state()
    with store.session() as session:
        node = find_node(session, ident)
        node.power_state = state.value
        return to_out_node(session, node)
