"""Node operations: verify the BMC, inspect, clean; each step idempotent and recorded."""

from __future__ import annotations

from sqlalchemy.orm import Session

from oneplatform.errors import PlatformError
from oneplatform.nodes import deploy
from oneplatform.nodes.common import bmc_for
from oneplatform.nodes.states import NodeState, set_node_state
from oneplatform.ops.engine import StepContext
from oneplatform.ops.model import OperationKind, StepFn, register
from oneplatform.store.models import Host, Node


def _move(ctx: StepContext, expected: NodeState, new: NodeState, message: str = "") -> None:
    """Move the operation's node (itself, or the node under its instance) if it is where
    the step expects it: after a crash the step runs again and finds it moved already."""
    with ctx.transaction() as session:
        node = deploy._node(session, ctx)
        if NodeState(node.state) is expected:
            set_node_state(session, node, new, message)


def step_verify(ctx: StepContext) -> None:
    """Log in to the BMC and read the power state: proves address and credentials."""
    _move(ctx, NodeState.ENROLL, NodeState.VERIFYING, "verifying the BMC")
    with ctx.store.session() as session:
        bmc = bmc_for(session.get_one(Node, ctx.resource_id), ctx.settings)
    power = bmc.power_state()
    with ctx.transaction() as session:
        node = session.get_one(Node, ctx.resource_id)
        node.power_state = power
        if NodeState(node.state) is NodeState.VERIFYING:
            set_node_state(session, node, NodeState.MANAGEABLE, "BMC verified")


def step_inspect(ctx: StepContext) -> None:
    """Read CPUs, memory, disks, NICs, boot modes and virtual media over the BMC, and size
    the node's host from them (one node is one unit of capacity)."""
    _move(ctx, NodeState.MANAGEABLE, NodeState.INSPECTING, "inspecting")
    with ctx.store.session() as session:
        bmc = bmc_for(session.get_one(Node, ctx.resource_id), ctx.settings)
    inv = bmc.inspect()
    with ctx.transaction() as session:
        node = session.get_one(Node, ctx.resource_id)
        node.inventory = inv.to_dict()
        node.power_state = inv.power_state
        host = session.get_one(Host, node.host_id)
        host.vcpus, host.ram_mb = inv.cpus, inv.memory_mb
        host.disk_gb = max((size for _name, size in inv.disks), default=0)
        if NodeState(node.state) is NodeState.INSPECTING:
            set_node_state(session, node, NodeState.MANAGEABLE, "inspected")


def _on_failure(failed: NodeState) -> object:
    def handler(session: Session, ctx: StepContext, err: PlatformError) -> None:
        node = session.get_one(Node, ctx.resource_id)
        state = NodeState(node.state)
        target = {
            NodeState.VERIFYING: NodeState.VERIFY_FAILED,
            NodeState.ENROLL: NodeState.VERIFY_FAILED,
            NodeState.INSPECTING: NodeState.INSPECT_FAILED,
            NodeState.CLEANING: NodeState.CLEAN_FAILED,
            NodeState.DELETING: NodeState.CLEAN_FAILED,
        }.get(state, failed)
        if state is NodeState.ENROLL:
            set_node_state(session, node, NodeState.VERIFYING)
        if target is not state:
            set_node_state(session, node, target, f"{ctx.step_name}: {err.message}")
        node.last_error = f"{ctx.step_name}: {err.message}"[:2000]
        session.get_one(Host, node.host_id).enabled = False

    return handler


def _kind(name: str, failed: NodeState, *steps: tuple[str, StepFn]) -> OperationKind:
    return register(
        OperationKind(
            name=name,
            resource_type="node",
            steps=steps,
            on_failure=_on_failure(failed),  # type: ignore[arg-type]
        )
    )


# -- cleaning ----------------------------------------------------------------------------------
def step_clean_prepare(ctx: StepContext) -> None:
    for state in (NodeState.MANAGEABLE, NodeState.DELETING, NodeState.CLEAN_FAILED):
        _move(ctx, state, NodeState.CLEANING, "cleaning")
    deploy.prepare_ramdisk(ctx, "clean")


def step_clean_boot(ctx: StepContext) -> None:
    deploy.boot_ramdisk(ctx, "clean")


def step_clean_wait(ctx: StepContext) -> None:
    deploy.wait_ramdisk(ctx, "clean", timeout=ctx.settings.ready_timeout_seconds * 2)


def step_clean_finish(ctx: StepContext) -> None:
    deploy.finish_ramdisk(ctx, "clean", boot_disk=False)
    with ctx.transaction() as session:
        node = session.get_one(Node, ctx.resource_id)
        if NodeState(node.state) is NodeState.CLEANING:
            deploy.mark_node(session, node, NodeState.AVAILABLE, "cleaned")


CLEAN_STEPS: tuple[tuple[str, StepFn], ...] = (
    ("clean_prepare", step_clean_prepare),
    ("clean_boot", step_clean_boot),
    ("clean_wait", step_clean_wait),
    ("clean_finish", step_clean_finish),
)

NODE_VERIFY = _kind("node.verify", NodeState.VERIFY_FAILED, ("verify", step_verify))
NODE_INSPECT = _kind("node.inspect", NodeState.INSPECT_FAILED, ("inspect", step_inspect))
NODE_ENROLL = _kind(
    "node.enroll", NodeState.VERIFY_FAILED, ("verify", step_verify), ("inspect", step_inspect)
)
NODE_CLEAN = _kind("node.clean", NodeState.CLEAN_FAILED, *CLEAN_STEPS)
NODE_ENROLL_PROVIDE = _kind(
    "node.enroll_provide",
    NodeState.VERIFY_FAILED,
    ("verify", step_verify),
    ("inspect", step_inspect),
    *CLEAN_STEPS,
)
