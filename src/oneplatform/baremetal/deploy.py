"""Instances on bare metal: the deploy and the delete-with-cleaning, as operation kinds.

Deploy (the create of a bare-metal flavor): ``image`` (the whole-disk format of the image,
the compute step every type shares) → ``prepare`` (node ``deploying``, a per-deploy token and
ISO) → ``boot_ramdisk`` → ``write`` (the deploy agent writes and verifies the image, adds the
data partition — the instance's data volume's size, the rest of the disk left free — writes
the config partition and reports; the most the data partition can grow to, the end of the
disk, is recorded as the volume's ``max_size_gb``) → ``boot_disk`` (eject, boot from disk,
power on) → ``wait_ports`` → ``finish`` (node ``active``, instance ``ACTIVE``).

Delete: power off, the node's cleaning steps, then ``release`` (node ``available``, ports
given back, instance ``DELETED``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from oneplatform.baremetal import ramdisk
from oneplatform.baremetal.operations import CLEAN_STEPS, advance, fail_node
from oneplatform.baremetal.ramdisk import operation_node
from oneplatform.baremetal.states import NODES, NodeState, move_node
from oneplatform.compute import operations as compute_ops
from oneplatform.compute import ports
from oneplatform.compute.states import INSTANCES, InstanceStatus
from oneplatform.errors import PlatformError
from oneplatform.ops.engine import StepContext
from oneplatform.ops.kinds import Intent
from oneplatform.ops.steps import define, wait_for_others
from oneplatform.schemas.compute import PowerState
from oneplatform.store.models import Instance


def step_prepare(ctx: StepContext) -> None:
    advance(ctx, NodeState.AVAILABLE, NodeState.DEPLOYING, "deploying")
    ramdisk.prepare(ctx, "deploy")


def step_boot_ramdisk(ctx: StepContext) -> None:
    ramdisk.boot(ctx, "deploy")


def step_write(ctx: StepContext) -> None:
    ramdisk.wait(ctx, "deploy", timeout=ctx.settings.ready_timeout_seconds * 3)
    with ctx.transaction() as session:
        row, _ = ramdisk.current_token(ctx, session, "deploy")
        record_data_ceiling(session.get_one(Instance, ctx.resource_id), dict(row.report or {}))


def record_data_ceiling(instance: Instance, report: dict[str, Any]) -> None:
    """The most the data volume (the instance's first: the data partition) can grow to, from
    what the deploy agent reported (``data_max_mib``: to the end of the disk), in whole GB."""
    try:
        most = int(report["data_max_mib"]) // 1024
    except (KeyError, TypeError, ValueError):
        return  # an agent that did not say: bounded by the host's free disk only
    volumes = [dict(v) for v in instance.volumes or ()]
    if volumes:
        volumes[0]["max_size_gb"] = most
        instance.volumes = volumes


def step_boot_disk(ctx: StepContext) -> None:
    ramdisk.finish(ctx, "deploy", boot_disk=True)


def step_finish(ctx: StepContext) -> None:
    with ctx.transaction() as session:
        node = operation_node(session, ctx)
        instance = session.get_one(Instance, ctx.resource_id)
        if NODES.state_of(node) is NodeState.DEPLOYING:
            move_node(session, node, NodeState.ACTIVE, f"serving {instance.name}")
        instance.power_state = PowerState.RUNNING.value
        INSTANCES.move(session, instance, InstanceStatus.ACTIVE)


def step_power_off(ctx: StepContext) -> None:
    for state in (NodeState.ACTIVE, NodeState.DEPLOYING, NodeState.DEPLOY_FAILED):
        advance(ctx, state, NodeState.DELETING, "instance deleted")
    compute_ops.step_delete_backend(ctx)  # the driver's delete: power off


def step_release(ctx: StepContext) -> None:
    ramdisk.finish(ctx, "clean", boot_disk=False)
    with ctx.transaction() as session:
        node = operation_node(session, ctx)
        instance = session.get_one(Instance, ctx.resource_id)
        node.instance_id = None
        if NODES.state_of(node) is NodeState.CLEANING:
            move_node(session, node, NodeState.AVAILABLE, "cleaned")
        ports.release(session, instance.id)
        instance.power_state = PowerState.UNKNOWN.value
        INSTANCES.move(session, instance, InstanceStatus.DELETED, "deleted")


def _on_failure(session: Session, ctx: StepContext, err: PlatformError) -> None:
    """The node goes to its failure state (deploy failed, clean failed); the instance to
    ERROR, as on any compute type."""
    if session.get_one(Instance, ctx.resource_id).host_id:
        fail_node(session, ctx, err)  # which also closes this operation's deploy tokens
    compute_ops.FAIL(session, ctx, err)


BAREMETAL_CREATE = define(
    "instance.create.baremetal",
    "instance",
    Intent.CREATE,
    ("image", compute_ops.step_image),
    ("prepare", step_prepare),
    ("boot_ramdisk", step_boot_ramdisk),
    ("write", step_write),
    ("boot_disk", step_boot_disk),
    ("wait_ports", compute_ops.step_wait_ports),
    ("finish", step_finish),
    on_failure=_on_failure,
    description="Deploy the image's whole-disk format onto the node through the deploy "
    "ramdisk, then boot the node from its disk.",
)
BAREMETAL_DELETE = define(
    "instance.delete.baremetal",
    "instance",
    Intent.DELETE,
    ("wait_others", wait_for_others),
    ("power_off", step_power_off),
    *CLEAN_STEPS,  # prepare, boot, wait: as when a node is provided
    ("release", step_release),
    on_failure=_on_failure,
    description="Power the node off and clean it; it is available again afterwards.",
)
