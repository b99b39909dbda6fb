"""Nodes: enroll (admin), list, show, manage/inspect/provide, power."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oneplatform.config import Settings
from oneplatform.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from oneplatform.iam import Caller
from oneplatform.nodes import operations as ops
from oneplatform.nodes.common import bmc_for, find_node
from oneplatform.nodes.states import ACTIONS, NodeState, set_node_state
from oneplatform.ops.engine import enqueue
from oneplatform.ops.service import to_out
from oneplatform.schemas.compute import ComputeType
from oneplatform.schemas.nodes import NodeAccepted, NodeEnroll, NodeOut
from oneplatform.secrets import box_for
from oneplatform.store.db import Store
from oneplatform.store.models import Event, Host, Instance, Node, Pool


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
    """Record the node and its host (disabled until available); verify, inspect, clean."""
    caller.require_admin()
    try:
        with store.session() as session:
            pool = session.scalars(select(Pool).where(Pool.name == req.pool)).first()
            if pool is None:
                raise NotFound(f"pool {req.pool!r} not found", code="pool_not_found")
            if pool.compute_type != ComputeType.BAREMETAL.value:
                raise InvalidInput(f"pool {req.pool!r} is not a bare-metal pool")
            if session.scalars(select(Node).where(Node.name == req.name)).first():
                raise AlreadyExists(f"node {req.name!r} already exists", code="node_exists")
            host = Host(
                name=req.name,
                pool_id=pool.id,
                uri="node://",
                bind_address="127.0.0.1",
                vcpus=0,
                ram_mb=0,
                disk_gb=0,
                traits=[],
                enabled=False,
                cpu_allocation_ratio=1.0,
                ram_allocation_ratio=1.0,
            )
            session.add(host)
            session.flush()
            node = Node(
                name=req.name,
                pool_id=pool.id,
                host_id=host.id,
                state=NodeState.ENROLL.value,
                bmc_address=req.bmc_address,
                bmc_system_id=req.bmc_system_id,
                bmc_username=req.bmc_username,
                bmc_password_enc=box_for(settings).encrypt(req.bmc_password)
                if req.bmc_password
                else "",
                port_map={k: v.model_dump() for k, v in req.port_map.items()},
            )
            session.add(node)
            session.flush()
            host.uri = f"node://{node.id}"
            session.add(
                Event(
                    resource_type="node",
                    resource_id=node.id,
                    from_status=None,
                    to_status=NodeState.ENROLL.value,
                    message="enrolled",
                )
            )
            kind = ops.NODE_ENROLL_PROVIDE if req.provide else ops.NODE_ENROLL
            node.target_state = (
                NodeState.AVAILABLE.value if req.provide else NodeState.MANAGEABLE.value
            )
            op = enqueue(session, kind, node.id, None)
            return NodeAccepted(operation=to_out(op), node=to_out_node(session, node))
    except IntegrityError:
        raise AlreadyExists(
            f"node or host {req.name!r} already exists", code="node_exists"
        ) from None


def act(store: Store, caller: Caller, ident: str, action: str) -> NodeAccepted:
    """manage (verify the BMC), inspect, provide (clean, then available)."""
    caller.require_admin()
    allowed, first = ACTIONS[action]
    with store.session() as session:
        node = find_node(session, ident)
        state = NodeState(node.state)
        if state not in allowed:
            raise Conflict(
                f"cannot {action} node {node.name!r} in state {state.value!r} "
                f"(allowed from: {', '.join(sorted(s.value for s in allowed))})",
                code="invalid_state",
            )
        if node.instance_id:
            raise Conflict(f"node {node.name!r} carries an instance", code="invalid_state")
        set_node_state(session, node, first, f"{action} requested")
        session.get_one(Host, node.host_id).enabled = False
        kind = {"manage": ops.NODE_VERIFY, "inspect": ops.NODE_INSPECT, "provide": ops.NODE_CLEAN}[
            action
        ]
        op = enqueue(session, kind, node.id, None)
        return NodeAccepted(operation=to_out(op), node=to_out_node(session, node))


def power(store: Store, settings: Settings, caller: Caller, ident: str, action: str) -> NodeOut:
    """Switch power through the BMC at once (refused while an operation drives the node)."""
    caller.require_admin()
    with store.session() as session:
        node = find_node(session, ident)
        if not NodeState(node.state).is_stable:
            raise Conflict(
                f"node {node.name!r} is {node.state}: its operation owns the power",
                code="invalid_state",
            )
        bmc = bmc_for(node, settings)
    # as in Ironic: `power off` and `reboot` are hard (a node may have no OS to ask)
    bmc.set_power({"on": "on", "off": "force_off", "reboot": "force_reboot"}[action])
    state = bmc.power_state()
    with store.session() as session:
        node = find_node(session, ident)
        node.power_state = state
        return to_out_node(session, node)
