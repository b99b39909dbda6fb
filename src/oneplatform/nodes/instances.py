"""Instances on bare metal: the deploy and the delete-with-cleaning, as operation kinds.

Picked by ``compute.operations.create_kind`` / ``delete_kind`` for bare-metal flavors; the
steps that every compute type shares (waiting for ports, releasing) are reused.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from oneplatform.compute import operations as compute_ops
from oneplatform.compute.lifecycle import set_status
from oneplatform.compute.states import InstanceStatus, PowerState
from oneplatform.errors import NotYet, PlatformError
from oneplatform.images.service import ready_artifact
from oneplatform.nodes import deploy
from oneplatform.nodes import operations as node_ops
from oneplatform.nodes.common import bmc_for
from oneplatform.nodes.states import NodeState
from oneplatform.ops.engine import StepContext
from oneplatform.ops.model import OperationKind, register
from oneplatform.store.models import Image, Instance, Node


def _node(session: Session, ctx: StepContext) -> Node:
    return deploy._node(session, ctx)


def step_image(ctx: StepContext) -> None:
    """Wait for the image, then make its whole-disk format (cached)."""
    from oneplatform.images.baremetal import build_disk_image
    from oneplatform.images.recipes import load_recipe

    with ctx.store.session() as session:
        image = session.get_one(Image, session.get_one(Instance, ctx.resource_id).image_id)
        if image.status == "BUILDING":
            raise NotYet(f"waiting for image {image.name} to be built", retry_after=2.0)
        ready_artifact(session, ctx.settings, image)
        name = image.name
    build_disk_image(load_recipe(name), ctx.settings.images_dir, ctx.progress)


def step_prepare(ctx: StepContext) -> None:
    with ctx.transaction() as session:
        node = _node(session, ctx)
        if NodeState(node.state) is NodeState.AVAILABLE:
            deploy.mark_node(session, node, NodeState.DEPLOYING, "deploying")
    deploy.prepare_ramdisk(ctx, "deploy")


def step_boot_ramdisk(ctx: StepContext) -> None:
    deploy.boot_ramdisk(ctx, "deploy")


def step_write(ctx: StepContext) -> None:
    deploy.wait_ramdisk(ctx, "deploy", timeout=ctx.settings.ready_timeout_seconds * 3)


def step_boot_disk(ctx: StepContext) -> None:
    deploy.finish_ramdisk(ctx, "deploy", boot_disk=True)


def step_finish(ctx: StepContext) -> None:
    with ctx.transaction() as session:
        node = _node(session, ctx)
        instance = session.get_one(Instance, ctx.resource_id)
        if NodeState(node.state) is NodeState.DEPLOYING:
            deploy.mark_node(session, node, NodeState.ACTIVE, f"serving {instance.name}")
        instance.power_state = PowerState.RUNNING.value
        set_status(session, instance, InstanceStatus.ACTIVE)


def step_power_off(ctx: StepContext) -> None:
    with ctx.transaction() as session:
        node = _node(session, ctx)
        if NodeState(node.state) in (
            NodeState.ACTIVE,
            NodeState.DEPLOYING,
            NodeState.DEPLOY_FAILED,
        ):
            deploy.mark_node(session, node, NodeState.DELETING, "instance deleted")
        bmc = bmc_for(node, ctx.settings)
    bmc.set_power("force_off")


def step_release(ctx: StepContext) -> None:
    deploy.finish_ramdisk(ctx, "clean", boot_disk=False)
    with ctx.transaction() as session:
        node = _node(session, ctx)
        instance = session.get_one(Instance, ctx.resource_id)
        node.instance_id = None
        if NodeState(node.state) is NodeState.CLEANING:
            deploy.mark_node(session, node, NodeState.AVAILABLE, "cleaned")
        deploy.release_ports(session, instance.id)
        instance.power_state = PowerState.UNKNOWN.value
        set_status(session, instance, InstanceStatus.DELETED, "deleted")


def _on_create_failure(session: Session, ctx: StepContext, err: PlatformError) -> None:
    instance = session.get_one(Instance, ctx.resource_id)
    if instance.host_id:
        node = _node(session, ctx)
        if NodeState(node.state) is NodeState.DEPLOYING:
            deploy.mark_node(
                session, node, NodeState.DEPLOY_FAILED, f"{ctx.step_name}: {err.message}"
            )
    compute_ops._on_failure(session, ctx, err)


def _on_delete_failure(session: Session, ctx: StepContext, err: PlatformError) -> None:
    node = _node(session, ctx)
    if NodeState(node.state) in (NodeState.CLEANING, NodeState.DELETING):
        deploy.mark_node(session, node, NodeState.CLEAN_FAILED, f"{ctx.step_name}: {err.message}")
    compute_ops._on_failure(session, ctx, err)


BAREMETAL_CREATE = register(
    OperationKind(
        name="instance.create.baremetal",
        resource_type="instance",
        steps=(
            ("image", step_image),
            ("prepare", step_prepare),
            ("boot_ramdisk", step_boot_ramdisk),
            ("write", step_write),
            ("boot_disk", step_boot_disk),
            ("wait_ports", compute_ops.step_wait_ports),
            ("finish", step_finish),
        ),
        on_failure=_on_create_failure,
    )
)
BAREMETAL_DELETE = register(
    OperationKind(
        name="instance.delete.baremetal",
        resource_type="instance",
        steps=(
            ("wait_others", compute_ops.step_wait_others),
            ("power_off", step_power_off),
            *node_ops.CLEAN_STEPS[:-1],  # prepare, boot, wait: as when a node is provided
            ("release", step_release),
        ),
        on_failure=_on_delete_failure,
    )
)
