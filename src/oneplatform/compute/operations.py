"""The operation kinds that drive instances, built from small idempotent steps."""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass
from typing import cast

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from oneplatform.compute.catalog import host_ref_in
from oneplatform.compute.drivers import driver_for
from oneplatform.compute.drivers.base import (
    ComputeDriver,
    InstanceSpec,
    PortMapping,
    SupportsSnapshot,
    VolumeSpec,
)
from oneplatform.compute.lifecycle import set_status
from oneplatform.compute.states import InstanceStatus, PowerState
from oneplatform.errors import BackendError, NotYet, PlatformError
from oneplatform.images.service import artifact_for_host, ready_artifact
from oneplatform.ops.engine import StepContext, wait_for_other_operations
from oneplatform.ops.model import OperationKind, StepFn, register
from oneplatform.secrets import box_for
from oneplatform.store.models import Host, Image, Instance, Pool, PortAllocation


@dataclass(frozen=True)
class Target:
    instance_id: str
    name: str
    driver: ComputeDriver | None
    ports: tuple[PortMapping, ...]
    bind_address: str


def _target(ctx: StepContext) -> Target:
    with ctx.store.session() as session:
        instance = session.get_one(Instance, ctx.resource_id)
        if instance.status == InstanceStatus.DELETING.value and not is_delete(ctx.kind):
            raise PlatformError(
                f"instance {instance.name!r} is being deleted: {ctx.kind} stops here",
                code="superseded",
            )
        if instance.host_id is None:
            return Target(instance.id, instance.name, None, (), "")
        host = session.get_one(Host, instance.host_id)
        ref = host_ref_in(session, ctx.settings, host, session.get_one(Pool, host.pool_id))
        ports = tuple(
            PortMapping(p.name, p.guest_port, p.host_port)
            for p in session.scalars(
                select(PortAllocation).where(PortAllocation.instance_id == instance.id)
            )
        )
        return Target(instance.id, instance.name, driver_for(ref), ports, host.bind_address)


def _driver(target: Target) -> ComputeDriver:
    if target.driver is None:
        raise PlatformError(f"instance {target.name!r} was never placed on a host")
    return target.driver


def _deadline(ctx: StepContext, what: str) -> None:
    if ctx.elapsed() > ctx.settings.ready_timeout_seconds:
        raise PlatformError(
            f"{what} did not happen within {ctx.settings.ready_timeout_seconds:.0f}s",
            code="timeout",
        )


def _set_power(ctx: StepContext, power: PowerState) -> None:
    with ctx.transaction() as session:
        session.get_one(Instance, ctx.resource_id).power_state = power.value


# -- steps ------------------------------------------------------------------------------------
def step_image(ctx: StepContext) -> None:
    """Wait for the image to be built, then make sure the host has it."""
    target = _target(ctx)
    with ctx.store.session() as session:
        image = session.get_one(Image, session.get_one(Instance, ctx.resource_id).image_id)
        if image.status == "BUILDING":
            _deadline(ctx, f"image {image.name!r} build")
            raise NotYet(f"waiting for image {image.name} to be built", retry_after=2.0)
        artifact = ready_artifact(session, ctx.settings, image)
    driver = _driver(target)
    artifact = artifact_for_host(ctx.settings, artifact, driver.compute_type, ctx.progress)
    driver.ensure_image(artifact)


def step_create(ctx: StepContext) -> None:
    target = _target(ctx)
    driver = _driver(target)
    with ctx.store.session() as session:
        instance = session.get_one(Instance, ctx.resource_id)
        artifact = ready_artifact(session, ctx.settings, session.get_one(Image, instance.image_id))
        spec = InstanceSpec(
            instance_id=instance.id,
            name=instance.name,
            image=artifact,
            vcpus=instance.vcpus,
            ram_mb=instance.ram_mb,
            disk_gb=instance.disk_gb,
            ports=target.ports,
            volumes=tuple(VolumeSpec(**v) for v in instance.volumes or ()),
            config_bundle=(
                box_for(ctx.settings).decrypt(instance.bundle_enc).encode()
                if instance.bundle_enc
                else None
            ),
        )
    # outside the transaction: exporting a missing format writes progress
    image = artifact_for_host(ctx.settings, artifact, driver.compute_type, ctx.progress)
    backend = driver.create(dataclasses.replace(spec, image=image))  # idempotent
    _set_power(ctx, backend.power_state)


def step_wait_running(ctx: StepContext) -> None:
    target = _target(ctx)
    driver = _driver(target)
    backend = driver.get(target.instance_id)
    if backend is None:
        raise BackendError(f"the backend has no object for instance {target.name!r}")
    _set_power(ctx, backend.power_state)
    if backend.power_state is PowerState.RUNNING:
        return
    if backend.power_state in (PowerState.STOPPED, PowerState.CRASHED):
        tail = driver.console_log(target.instance_id, tail=20)
        raise BackendError(
            f"instance {target.name!r} stopped while starting "
            f"(backend state {backend.backend_state}); console:\n{tail}"
        )
    _deadline(ctx, "start")
    raise NotYet(f"backend state {backend.backend_state}", retry_after=0.5)


def step_wait_ports(ctx: StepContext) -> None:
    """The instance is ready when every service port accepts TCP on the host's address."""
    target = _target(ctx)
    closed = [p for p in target.ports if not _accepts(target.bind_address, p.host_port)]
    if not closed:
        return
    backend = _driver(target).get(target.instance_id)
    if backend is None or backend.power_state in (PowerState.STOPPED, PowerState.CRASHED):
        step_wait_running(ctx)  # raises with the console's tail
    _deadline(ctx, "service ports opening")
    names = ", ".join(f"{p.name}:{p.host_port}" for p in closed)
    raise NotYet(f"waiting for {names} to accept connections", retry_after=0.25)


def _accepts(address: str, port: int, settle: float = 0.15) -> bool:
    """True when a service really holds the port.

    Connecting is not enough: a VM's forwarded port (QEMU user networking) is held by QEMU
    on the host and accepts even while nothing listens in the guest, then drops the
    connection at once. So after connecting, wait ``settle`` seconds: a connection closed in
    that time is no service; one that stays open (or sends a greeting) is.
    """
    try:
        with socket.create_connection((address, port), timeout=1.0) as sock:
            sock.settimeout(settle)
            try:
                return sock.recv(1) != b""
            except TimeoutError:
                return True
            except OSError:
                return False
    except OSError:
        return False


def _finish_as(status: InstanceStatus, message: str = "") -> StepFn:
    def step(ctx: StepContext) -> None:
        with ctx.transaction() as session:
            set_status(session, session.get_one(Instance, ctx.resource_id), status, message)

    return step


def step_stop(ctx: StepContext) -> None:
    _driver(_target(ctx)).stop(ctx.resource_id)


def step_wait_stopped(ctx: StepContext) -> None:
    target = _target(ctx)
    backend = _driver(target).get(target.instance_id)
    power = backend.power_state if backend else PowerState.STOPPED
    _set_power(ctx, power)
    if power in (PowerState.STOPPED, PowerState.CRASHED):
        return
    _deadline(ctx, "stop")
    raise NotYet(f"backend state {backend.backend_state if backend else 'gone'}", 0.5)


def step_start(ctx: StepContext) -> None:
    _driver(_target(ctx)).start(ctx.resource_id)


def step_reboot(ctx: StepContext) -> None:
    _driver(_target(ctx)).reboot(ctx.resource_id)


def step_wait_others(ctx: StepContext) -> None:
    wait_for_other_operations(ctx, ctx.settings.ready_timeout_seconds)


def step_delete_backend(ctx: StepContext) -> None:
    target = _target(ctx)
    if target.driver is not None:
        target.driver.delete(target.instance_id)  # silent if already gone


def step_release(ctx: StepContext) -> None:
    """Give back ports and capacity, and mark the instance deleted (its name is free again)."""
    with ctx.transaction() as session:
        instance = session.get_one(Instance, ctx.resource_id)
        session.execute(delete(PortAllocation).where(PortAllocation.instance_id == instance.id))
        instance.power_state = PowerState.UNKNOWN.value
        set_status(session, instance, InstanceStatus.DELETED, "deleted")


def step_snapshot(ctx: StepContext) -> None:
    target = _target(ctx)
    cast(SupportsSnapshot, _driver(target)).snapshot(target.instance_id, ctx.params["name"])


def _on_failure(session: Session, ctx: StepContext, err: PlatformError) -> None:
    instance = session.get_one(Instance, ctx.resource_id)
    if instance.status == InstanceStatus.DELETED.value:
        return
    if instance.status == InstanceStatus.DELETING.value and not is_delete(ctx.kind):
        return  # superseded by the delete, which owns the status now
    set_status(session, instance, InstanceStatus.ERROR, f"{ctx.step_name}: {err.message}")


def is_delete(kind: str) -> bool:
    return kind.startswith("instance.delete")


def create_kind(compute_type: str) -> OperationKind:
    """Bare metal deploys through its own steps; the others share INSTANCE_CREATE."""
    if compute_type == "baremetal":
        from oneplatform.nodes.instances import BAREMETAL_CREATE

        return BAREMETAL_CREATE
    return INSTANCE_CREATE


def delete_kind(compute_type: str) -> OperationKind:
    if compute_type == "baremetal":
        from oneplatform.nodes.instances import BAREMETAL_DELETE

        return BAREMETAL_DELETE
    return INSTANCE_DELETE


def _kind(name: str, *steps: tuple[str, StepFn], fail: bool = True) -> OperationKind:
    return register(
        OperationKind(
            name=name,
            resource_type="instance",
            steps=tuple(steps),
            on_failure=_on_failure if fail else None,
        )
    )


ACTIVE = _finish_as(InstanceStatus.ACTIVE)
INSTANCE_CREATE = _kind(
    "instance.create",
    ("image", step_image),
    ("create", step_create),
    ("wait_running", step_wait_running),
    ("wait_ports", step_wait_ports),
    ("finish", ACTIVE),
)
INSTANCE_STOP = _kind(
    "instance.stop",
    ("stop", step_stop),
    ("wait_stopped", step_wait_stopped),
    ("finish", _finish_as(InstanceStatus.SHUTOFF)),
)
INSTANCE_START = _kind(
    "instance.start",
    ("start", step_start),
    ("wait_running", step_wait_running),
    ("wait_ports", step_wait_ports),
    ("finish", ACTIVE),
)
INSTANCE_REBOOT = _kind(
    "instance.reboot",
    ("reboot", step_reboot),
    ("wait_running", step_wait_running),
    ("wait_ports", step_wait_ports),
    ("finish", ACTIVE),
)
INSTANCE_DELETE = _kind(
    "instance.delete",
    ("wait_others", step_wait_others),
    ("delete_backend", step_delete_backend),
    ("release", step_release),
)
INSTANCE_SNAPSHOT = _kind("instance.snapshot", ("snapshot", step_snapshot), fail=False)
