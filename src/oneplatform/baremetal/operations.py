"""Node operations: verify the BMC, inspect, clean; each step idempotent and recorded,
each reaching the node through its driver."""

from __future__ import annotations

from sqlalchemy.orm import Session

from oneplatform.baremetal import ramdisk
from oneplatform.baremetal.reach import node_driver
from oneplatform.baremetal.states import NODES, NodeState, move_node
from oneplatform.errors import PlatformError
from oneplatform.ops.engine import StepContext
from oneplatform.ops.kinds import Intent, OperationKind, StepFn
from oneplatform.ops.steps import define
from oneplatform.store.models import Host, Node


def advance(ctx: StepContext, expected: NodeState, new: NodeState, message: str = "") -> None:
    """Move the operation's node (itself, or the node under its instance) if it is where
    the step expects it: after a crash the step runs again and finds it moved already."""
    with ctx.transaction() as session:
        node = ramdisk.operation_node(session, ctx)
        if NODES.state_of(node) is expected:
            move_node(session, node, new, message)


def step_verify(ctx: StepContext) -> None:
    """Log in to the BMC and read the power state: proves address and credentials."""
    advance(ctx, NodeState.ENROLL, NodeState.VERIFYING, "verifying the BMC")
    with ctx.store.session() as session:
        driver = node_driver(session, ctx.settings, session.get_one(Node, ctx.resource_id))
    power = driver.power_state()
    with ctx.transaction() as session:
        node = session.get_one(Node, ctx.resource_id)
        node.power_state = power.value
        if NODES.state_of(node) is NodeState.VERIFYING:
            move_node(session, node, NodeState.MANAGEABLE, "BMC verified")


def step_inspect(ctx: StepContext) -> None:
    """Read CPUs, memory, disks, NICs, boot modes and virtual media, and size the node's host
    from them (one node is one unit of capacity)."""
    advance(ctx, NodeState.MANAGEABLE, NodeState.INSPECTING, "inspecting")
    with ctx.store.session() as session:
        driver = node_driver(session, ctx.settings, session.get_one(Node, ctx.resource_id))
    inv = driver.inspect()
    with ctx.transaction() as session:
        node = session.get_one(Node, ctx.resource_id)
        node.inventory = inv.to_dict()
        node.power_state = inv.power_state.value
        host = session.get_one(Host, node.host_id)
        host.vcpus, host.ram_mb = inv.cpus, inv.memory_mb
        host.disk_gb = max((size for _name, size in inv.disks), default=0)
        if NODES.state_of(node) is NodeState.INSPECTING:
            move_node(session, node, NodeState.MANAGEABLE, "inspected")


def fail_node(session: Session, ctx: StepContext, err: PlatformError) -> None:
    """A node an operation was driving goes to its failure state; one at rest stays where it
    is. Either way the error is its last error."""
    ramdisk.close_tokens(session, ctx.settings, ctx.operation_id, "closed")
    node = ramdisk.operation_node(session, ctx)
    message = f"{ctx.step_name}: {err.message}"
    state = NODES.state_of(node)
    if state is NodeState.ENROLL:  # failed before verifying began: it failed to verify
        move_node(session, node, NodeState.VERIFYING)
        state = NodeState.VERIFYING
    if not NODES.is_stable(state):
        move_node(session, node, NODES.failure_of(state), message)
    node.last_error = message[:2000]


def node_kind(
    name: str, *steps: tuple[str, StepFn], intent: Intent = Intent.ACTION
) -> OperationKind:
    return define(name, "node", intent, *steps, on_failure=fail_node)


# -- cleaning ----------------------------------------------------------------------------------
def step_clean_prepare(ctx: StepContext) -> None:
    for state in (NodeState.MANAGEABLE, NodeState.DELETING, NodeState.CLEAN_FAILED):
        advance(ctx, state, NodeState.CLEANING, "cleaning")
    ramdisk.prepare(ctx, "clean")


def step_clean_boot(ctx: StepContext) -> None:
    ramdisk.boot(ctx, "clean")


def step_clean_wait(ctx: StepContext) -> None:
    ramdisk.wait(ctx, "clean", timeout=ctx.settings.ready_timeout_seconds * 2)


def step_clean_finish(ctx: StepContext) -> None:
    ramdisk.finish(ctx, "clean", boot_disk=False)
    advance(ctx, NodeState.CLEANING, NodeState.AVAILABLE, "cleaned")


CLEAN_STEPS: tuple[tuple[str, StepFn], ...] = (
    ("clean_prepare", step_clean_prepare),
    ("clean_boot", step_clean_boot),
    ("clean_wait", step_clean_wait),
)
CLEAN_FINISH: tuple[str, StepFn] = ("clean_finish", step_clean_finish)

NODE_VERIFY = node_kind("node.verify", ("verify", step_verify))
NODE_INSPECT = node_kind("node.inspect", ("inspect", step_inspect))
NODE_ENROLL = node_kind(
    "node.enroll", ("verify", step_verify), ("inspect", step_inspect), intent=Intent.CREATE
)
NODE_CLEAN = node_kind("node.clean", *CLEAN_STEPS, CLEAN_FINISH)
NODE_ENROLL_PROVIDE = node_kind(
    "node.enroll_provide",
    ("verify", step_verify),
    ("inspect", step_inspect),
    *CLEAN_STEPS,
    CLEAN_FINISH,
    intent=Intent.CREATE,
)
