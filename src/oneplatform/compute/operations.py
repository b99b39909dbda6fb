"""The operation kinds that drive instances, built from small idempotent steps.

The steps here serve every compute type: a compute type whose create or delete needs steps
of its own (bare metal deploys through a ramdisk) composes its kinds from these and its own,
and names them in its :class:`~oneplatform.compute.types.ComputeTypeSpec`.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, replace
from typing import cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneplatform.compute import ports
from oneplatform.compute.drivers.base import (
    ComputeDriver,
    HostRoute,
    InstanceSpec,
    PortMapping,
    SupportsForcedReboot,
    SupportsResize,
    SupportsSnapshot,
    VolumeSpec,
)
from oneplatform.compute.hosts import driver_of
from oneplatform.compute.states import INSTANCES, InstanceStatus
from oneplatform.compute.types import spec_for
from oneplatform.config import Settings
from oneplatform.errors import BackendError, NotYet, PlatformError
from oneplatform.images.catalog import IMAGES, ImageStatus, ready_artifact
from oneplatform.ops.engine import StepContext
from oneplatform.ops.kinds import Intent
from oneplatform.ops.steps import (
    become,
    check_not_superseded,
    deadline,
    define,
    fail_resource,
    wait_for_others,
)
from oneplatform.schemas.compute import PowerState
from oneplatform.secrets import box_for
from oneplatform.store.models import Host, Image, Instance, PortAllocation


def load_instance(session: Session, ctx: StepContext) -> Instance:
    return session.get_one(Instance, ctx.resource_id)


@dataclass(frozen=True)
class Target:
    """What a step needs to act on the operation's instance through its host's driver."""

    instance_id: str
    name: str
    driver: ComputeDriver | None
    ports: tuple[PortMapping, ...]
    addresses: dict[str, str]  # port name -> the address it is published on

    def require_driver(self) -> ComputeDriver:
        if self.driver is None:
            raise PlatformError(f"instance {self.name!r} was never placed on a host")
        return self.driver


def target(ctx: StepContext) -> Target:
    """The operation's instance and its driver; stops the operation once a delete took over."""
    with ctx.store.session() as session:
        instance = load_instance(session, ctx)
        check_not_superseded(ctx, INSTANCES, instance)
        if instance.host_id is None:
            return Target(instance.id, instance.name, None, (), {})
        host = session.get_one(Host, instance.host_id)
        rows = list(
            session.scalars(select(PortAllocation).where(PortAllocation.instance_id == instance.id))
        )
        mapped = tuple(PortMapping(p.name, p.guest_port, p.host_port) for p in rows)
        driver = driver_of(session, ctx.settings, host)
        return Target(instance.id, instance.name, driver, mapped, {p.name: p.address for p in rows})


def set_power(ctx: StepContext, power: PowerState) -> None:
    with ctx.transaction() as session:
        load_instance(session, ctx).power_state = power.value


# -- create --------------------------------------------------------------------------------
IMAGE_BUILD_WAIT_S = 3600.0


def create_wait_limit(settings: Settings) -> float:
    """How long a database waits for its compute instance's create: that operation bounds
    each of its own steps (an image build, an import onto the host, the start, the ports),
    so this is only a backstop past their sum, never a shorter limit of its own (a first
    import onto an emulated cluster node takes minutes)."""
    return IMAGE_BUILD_WAIT_S + 4 * settings.ready_timeout_seconds


def step_image(ctx: StepContext) -> None:
    """Wait for the image to be built, make the format the compute type loads, and make sure
    the host has it."""
    driver = target(ctx).require_driver()
    with ctx.store.session() as session:
        image = session.get_one(Image, load_instance(session, ctx).image_id)
        if IMAGES.state_of(image) is ImageStatus.BUILDING:
            # The build has bounds of its own and fails the image (then this step) if it
            # fails; a first build from scratch takes minutes.
            deadline(ctx, f"the build of image {image.name!r}", IMAGE_BUILD_WAIT_S)
            raise NotYet(f"waiting for image {image.name} to be built", retry_after=2.0)
        artifact = ready_artifact(session, ctx.settings, image)
    prepared = spec_for(driver.compute_type).prepare_image(ctx.settings, artifact, ctx.progress)
    driver.ensure_image(prepared)


def host_routes(settings: Settings) -> tuple[HostRoute, ...]:
    """The host services every guest may reach: the backup store, on the service address."""
    return (
        HostRoute("store", settings.service_address, settings.store_port),
        HostRoute("replication", settings.service_address, settings.replication_port),
    )


def step_create(ctx: StepContext) -> None:
    """Create the backend object (idempotent: an existing one is found, not duplicated)."""
    found = target(ctx)
    driver = found.require_driver()
    with ctx.store.session() as session:
        instance = load_instance(session, ctx)
        artifact = ready_artifact(session, ctx.settings, session.get_one(Image, instance.image_id))
        spec = InstanceSpec(
            instance_id=instance.id,
            name=instance.name,
            image=artifact,
            vcpus=instance.vcpus,
            ram_mb=instance.ram_mb,
            disk_gb=instance.disk_gb,
            ports=found.ports,
            volumes=tuple(VolumeSpec(**v) for v in instance.volumes or ()),
            network=instance.network_group or instance.project_id,
            host_services=host_routes(ctx.settings),
            config_bundle=(
                box_for(ctx.settings).decrypt(instance.bundle_enc).encode()
                if instance.bundle_enc
                else None
            ),
        )
    prepare = spec_for(driver.compute_type).prepare_image
    image = prepare(ctx.settings, artifact, ctx.progress)  # cached: made by step_image
    backend = driver.create(replace(spec, image=image))
    set_power(ctx, backend.power_state)


def step_wait_running(ctx: StepContext) -> None:
    """Poll until the backend runs the instance; fail with the console's tail if it stops."""
    found = target(ctx)
    driver = found.require_driver()
    backend = driver.get(found.instance_id)
    if backend is None:
        raise BackendError(f"the backend has no object for instance {found.name!r}")
    set_power(ctx, backend.power_state)
    if backend.power_state is PowerState.RUNNING:
        return
    if backend.power_state in (PowerState.STOPPED, PowerState.CRASHED):
        tail = driver.console_log(found.instance_id, tail=20)
        raise BackendError(
            f"instance {found.name!r} stopped while starting "
            f"(backend state {backend.backend_state}); console:\n{tail}"
        )
    deadline(ctx, "start")
    raise NotYet(f"backend state {backend.backend_state}", retry_after=0.5)


# While a create waits for its service ports it keeps its worker for a short window and
# tries every PORT_POLL_S (a TCP connect is cheap), asking the backend whether the instance
# still runs only every BACKEND_CHECK_S: releasing the operation and being claimed again
# for each try cost more than the wait, and each backend query competes with the engine's
# start for the CPU.
PORT_POLL_S = 0.05
PORT_WINDOW_S = 3.0
BACKEND_CHECK_S = 1.0


def step_wait_ports(ctx: StepContext) -> None:
    """The instance is ready when every service port accepts TCP where it is published."""
    found = target(ctx)
    driver = found.require_driver()
    served = [p for p in found.ports if not p.name.startswith(ports.FORWARD_ONLY_PREFIX)]
    settle = spec_for(driver.compute_type).port_settle_s
    if driver.host.settings.get("publish_address"):
        # published behind a forward (a cluster node's QEMU hostfwd), which accepts before
        # anything listens: as a VM's forwarded port
        settle = max(settle, spec_for("vm").port_settle_s)
    started = time.monotonic()
    checked = started
    while True:
        closed = [p for p in served if not accepts(found.addresses[p.name], p.host_port, settle)]
        if not closed:
            return
        now = time.monotonic()
        if now - checked >= BACKEND_CHECK_S or now - started >= PORT_WINDOW_S:
            checked = now
            backend = driver.get(found.instance_id)
            if backend is None or backend.power_state in (PowerState.STOPPED, PowerState.CRASHED):
                step_wait_running(ctx)  # raises with the console's tail
        if now - started >= PORT_WINDOW_S:
            deadline(ctx, "service ports opening")
            names = ", ".join(f"{p.name}:{p.host_port}" for p in closed)
            raise NotYet(f"waiting for {names} to accept connections", retry_after=0.1)
        time.sleep(PORT_POLL_S)


def accepts(address: str, port: int, settle: float) -> bool:
    """True when a service really holds the port.

    Connecting is not always enough: a VM's forwarded port (QEMU user networking) is held by
    QEMU on the host and accepts even while nothing listens in the guest, then drops the
    connection at once. So after connecting, wait ``settle`` seconds (the compute type's
    ``port_settle_s``): a connection closed in that time is no service; one that stays open
    (or sends a greeting) is. With no settle, a connect is the answer.
    """
    try:
        with socket.create_connection((address, port), timeout=1.0) as sock:
            if settle <= 0:
                return True
            sock.settimeout(settle)
            try:
                return sock.recv(1) != b""
            except TimeoutError:
                return True
            except OSError:
                return False
    except OSError:
        return False


# -- actions -------------------------------------------------------------------------------
def step_stop(ctx: StepContext) -> None:
    target(ctx).require_driver().stop(ctx.resource_id)


def step_wait_stopped(ctx: StepContext) -> None:
    found = target(ctx)
    backend = found.require_driver().get(found.instance_id)
    power = backend.power_state if backend else PowerState.STOPPED
    set_power(ctx, power)
    if power in (PowerState.STOPPED, PowerState.CRASHED):
        return
    deadline(ctx, "stop")
    raise NotYet(f"backend state {backend.backend_state if backend else 'gone'}", 0.5)


def step_start(ctx: StepContext) -> None:
    target(ctx).require_driver().start(ctx.resource_id)


def step_reboot(ctx: StepContext) -> None:
    """A graceful reboot, or a reset when the operation was asked with ``force``."""
    driver = target(ctx).require_driver()
    if ctx.params.get("force"):
        cast(SupportsForcedReboot, driver).force_reboot(ctx.resource_id)
    else:
        driver.reboot(ctx.resource_id)


def step_resize(ctx: StepContext) -> None:
    """Resize the backend object to the instance's (already updated) size."""
    driver = target(ctx).require_driver()
    with ctx.store.session() as session:
        instance = load_instance(session, ctx)
        vcpus, ram_mb = instance.vcpus, instance.ram_mb
    cast(SupportsResize, driver).resize(ctx.resource_id, vcpus, ram_mb)


def step_snapshot(ctx: StepContext) -> None:
    found = target(ctx)
    cast(SupportsSnapshot, found.require_driver()).snapshot(found.instance_id, ctx.params["name"])


# -- repair --------------------------------------------------------------------------------
def step_repair(ctx: StepContext) -> None:
    """Bring the backend back to running: start a stopped or crashed one, recreate a vanished
    one from the instance's spec on its own data volumes (never on new, empty ones).
    A backend that refuses is retried with backoff; after ``repair_attempts`` the repair
    gives up with the last error."""
    found = target(ctx)
    driver = found.require_driver()
    try:
        _repair(ctx, driver, found)
    except BackendError as err:
        attempts = int(ctx.params.get("attempts", 0)) + 1
        ctx.remember(attempts=attempts, last_error=err.message)
        if attempts >= ctx.settings.repair_attempts:
            raise PlatformError(
                f"gave up after {attempts} attempts: {err.message}", code="repair_failed"
            ) from None
        backoff = min(ctx.settings.repair_backoff_seconds * 2 ** (attempts - 1), 300.0)
        raise NotYet(f"attempt {attempts} failed: {err.message}", retry_after=backoff) from None


def _repair(ctx: StepContext, driver: ComputeDriver, found: Target) -> None:
    backend = driver.get(found.instance_id)
    if backend is None:
        with ctx.store.session() as session:
            volumes = [VolumeSpec(**v) for v in load_instance(session, ctx).volumes or ()]
        missing = driver.missing_volumes(found.instance_id, volumes)
        if missing:
            raise PlatformError(
                f"the backend object and the data volume(s) {', '.join(missing)} of instance "
                f"{found.name!r} are gone: recreating it would start on empty storage",
                code="data_volume_gone",
            )
        ctx.progress("the backend object is gone: recreating it on its data volumes")
        step_image(ctx)
        step_create(ctx)
    elif backend.power_state is not PowerState.RUNNING:
        ctx.progress(f"the backend is {backend.backend_state}: starting it")
        driver.start(found.instance_id)


# -- delete --------------------------------------------------------------------------------
def step_delete_backend(ctx: StepContext) -> None:
    found = target(ctx)
    if found.driver is not None:
        found.driver.delete(found.instance_id)  # silent if already gone


def step_release(ctx: StepContext) -> None:
    """Give back ports and capacity, and mark the instance deleted (its name is free again)."""
    with ctx.transaction() as session:
        instance = load_instance(session, ctx)
        ports.release(session, instance.id)
        instance.power_state = PowerState.UNKNOWN.value
        INSTANCES.move(session, instance, InstanceStatus.DELETED, "deleted")


FAIL = fail_resource(INSTANCES, load_instance)
ACTIVE = become(INSTANCES, load_instance, InstanceStatus.ACTIVE)
INSTANCE_CREATE = define(
    "instance.create",
    "instance",
    Intent.CREATE,
    ("image", step_image),
    ("create", step_create),
    ("wait_running", step_wait_running),
    ("wait_ports", step_wait_ports),
    ("finish", ACTIVE),
    on_failure=FAIL,
    description="Load the image on the host, create and start the instance, wait for its ports.",
)
INSTANCE_STOP = define(
    "instance.stop",
    "instance",
    Intent.ACTION,
    ("stop", step_stop),
    ("wait_stopped", step_wait_stopped),
    ("finish", become(INSTANCES, load_instance, InstanceStatus.SHUTOFF)),
    on_failure=FAIL,
)
INSTANCE_START = define(
    "instance.start",
    "instance",
    Intent.ACTION,
    ("start", step_start),
    ("wait_running", step_wait_running),
    ("wait_ports", step_wait_ports),
    ("finish", ACTIVE),
    on_failure=FAIL,
)
INSTANCE_REBOOT = define(
    "instance.reboot",
    "instance",
    Intent.ACTION,
    ("reboot", step_reboot),
    ("wait_running", step_wait_running),
    ("wait_ports", step_wait_ports),
    ("finish", ACTIVE),
    on_failure=FAIL,
)
INSTANCE_RESIZE = define(
    "instance.resize",
    "instance",
    Intent.ACTION,
    ("resize", step_resize),
    ("wait_running", step_wait_running),
    ("wait_ports", step_wait_ports),
    ("finish", ACTIVE),
    on_failure=FAIL,
    description="Change vCPUs and RAM in place (compute types with the resize capability).",
)
INSTANCE_REPAIR = define(
    "instance.repair",
    "instance",
    Intent.ACTION,
    ("repair", step_repair),
    ("wait_running", step_wait_running),
    ("wait_ports", step_wait_ports),
    ("finish", become(INSTANCES, load_instance, InstanceStatus.ACTIVE, "repaired")),
    on_failure=FAIL,
    description="Start a stopped or crashed backend, or recreate a vanished one on its data "
    "volumes (the reconciler, and restarts of databases whose compute is down).",
)
INSTANCE_DELETE = define(
    "instance.delete",
    "instance",
    Intent.DELETE,
    ("wait_others", wait_for_others),
    ("delete_backend", step_delete_backend),
    ("release", step_release),
    on_failure=FAIL,
)
INSTANCE_SNAPSHOT = define(
    "instance.snapshot",
    "instance",
    Intent.ACTION,
    ("snapshot", step_snapshot),
    description="Snapshot the instance's disks; the instance's status does not change.",
)
