"""Instances: create, read, act, delete. Writes desired state plus an operation and returns."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import cast

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oneplatform import quotas
from oneplatform.compute import operations as ops
from oneplatform.compute.capabilities import Capability
from oneplatform.compute.catalog import flavor_by_name, require_capability
from oneplatform.compute.drivers.base import SupportsExec, SupportsGrowStorage, VolumeSpec
from oneplatform.compute.hosts import driver_of
from oneplatform.compute.images import image_for_create
from oneplatform.compute.scheduler import fits_in_place, select_host
from oneplatform.compute.states import INSTANCES, InstanceStatus
from oneplatform.compute.types import spec_for
from oneplatform.config import Settings
from oneplatform.errors import AlreadyExists, Conflict, NotFound
from oneplatform.iam import Caller
from oneplatform.ops.engine import enqueue
from oneplatform.ops.kinds import OperationKind
from oneplatform.ops.service import to_out
from oneplatform.schemas.instances import (
    ConsoleOut,
    Endpoint,
    ExecOut,
    InstanceAccepted,
    InstanceCreate,
    InstanceOut,
)
from oneplatform.store.db import Store
from oneplatform.store.models import (
    Cluster,
    ClusterNode,
    Flavor,
    Host,
    Image,
    Instance,
    Operation,
    PortAllocation,
    new_id,
)


# -- reading ---------------------------------------------------------------------------------
def endpoints(session: Session, instance: Instance) -> list[Endpoint]:
    """Where the instance's service ports are reached (none until it is placed)."""
    rows = session.scalars(
        select(PortAllocation)
        .where(PortAllocation.instance_id == instance.id)
        .order_by(PortAllocation.name)
    )
    return [Endpoint(name=p.name, host=p.address, port=p.host_port) for p in rows]


def to_out_instance(session: Session, instance: Instance) -> InstanceOut:
    flavor = session.get_one(Flavor, instance.flavor_id)
    image = session.get_one(Image, instance.image_id)
    host = session.get(Host, instance.host_id) if instance.host_id else None
    return InstanceOut(
        id=instance.id,
        name=instance.name,
        project_id=instance.project_id,
        status=instance.status,
        status_message=instance.status_message,
        power_state=instance.power_state,
        compute_type=instance.compute_type,
        flavor=flavor.name,
        image=image.name,
        host=host.name if host else None,
        endpoints=endpoints(session, instance),
        created_at=instance.created_at,
        updated_at=instance.updated_at,
    )


def find_instance(session: Session, caller: Caller, ident: str) -> Instance:
    """A live instance of the caller's project, by id or name; 404 for anyone else's."""
    instance = session.scalars(
        select(Instance).where(
            Instance.project_id == caller.project_id,
            Instance.deleted_at.is_(None),
            Instance.managed_by.is_(None),
            (Instance.id == ident) | (Instance.name == ident),
        )
    ).first()
    if instance is None:
        raise NotFound(f"instance {ident!r} not found", code="instance_not_found")
    return instance


def get_instance(store: Store, caller: Caller, ident: str) -> InstanceOut:
    with store.session() as session:
        return to_out_instance(session, find_instance(session, caller, ident))


def list_instances(store: Store, caller: Caller) -> list[InstanceOut]:
    with store.session() as session:
        rows = session.scalars(
            select(Instance)
            .where(
                Instance.project_id == caller.project_id,
                Instance.deleted_at.is_(None),
                Instance.managed_by.is_(None),
            )
            .order_by(Instance.created_at)
        )
        return [to_out_instance(session, i) for i in rows]


# -- creating --------------------------------------------------------------------------------
def create_instance(store: Store, caller: Caller, req: InstanceCreate) -> InstanceAccepted:
    """Validate, place and reserve in one transaction; any refusal leaves nothing behind."""
    try:
        with store.session() as session:
            flavor = flavor_by_name(session, req.flavor, caller.project_id)
            instance, op = place_instance(session, caller.project_id, req.name, flavor, req.image)
            return InstanceAccepted(
                operation=to_out(op), instance=to_out_instance(session, instance)
            )
    except IntegrityError:
        raise AlreadyExists(
            f"an instance named {req.name!r} already exists", code="instance_exists"
        ) from None


def place_instance(
    session: Session,
    project_id: str,
    name: str,
    flavor: Flavor,
    image_name: str,
    *,
    managed_by: str | None = None,
    bundle_enc: str | None = None,
    volumes: list[VolumeSpec] | None = None,
    credit: quotas.Need | None = None,
) -> tuple[Instance, Operation]:
    """Place a new instance and enqueue its create, in the caller's transaction.

    Used by the compute API and by services (dbaas) that own their instances. Volumes count
    against the host's disk beside the flavor's own disk, and against the project's storage
    quota; ``credit`` is what the same request gives back (a move's former primary).
    """
    spec = spec_for(flavor.compute_type)
    image = image_for_create(session, image_name)
    _check_name_free(session, project_id, name)
    extra_disk = sum(v.size_gb for v in volumes or ())
    need = quotas.compute_need(flavor.vcpus, flavor.ram_mb, flavor.disk_gb + extra_disk)
    quotas.require(session, project_id, need, credit)
    host = select_host(session, flavor, extra_disk_gb=extra_disk, spread_project=project_id)
    instance = Instance(
        id=new_id(),
        project_id=project_id,
        name=name,
        flavor_id=flavor.id,
        image_id=image.id,
        host_id=host.id,
        compute_type=flavor.compute_type,
        vcpus=flavor.vcpus,
        ram_mb=flavor.ram_mb,
        disk_gb=flavor.disk_gb + extra_disk,
        managed_by=managed_by,
        bundle_enc=bundle_enc,
        volumes=[v.as_record() for v in volumes or ()],
    )
    INSTANCES.created(session, instance, f"placed on {host.name}")
    session.add(instance)
    session.flush()
    spec.claim(session, host, instance)
    spec.allocate_ports(session, host, instance, image.ports)
    op = enqueue(session, spec.create, instance.id, project_id)
    return instance, op


def fence(store: Store, settings: Settings, instance_id: str, reason: str) -> None:
    """Cut the instance's power at once through its compute API — a container killed, a
    domain destroyed, a node powered off at its BMC — and keep it off (SHUTOFF: the
    reconciler leaves it so). Raises when its backend cannot do it: then it may still run."""
    with store.session() as session:
        instance = session.get_one(Instance, instance_id)
        if instance.host_id is None:
            return
        driver = driver_of(session, settings, session.get_one(Host, instance.host_id))
    driver.fence(instance_id)
    with store.session() as session:
        instance = session.get_one(Instance, instance_id)
        if INSTANCES.state_of(instance) is not InstanceStatus.SHUTOFF:
            if not INSTANCES.allows(INSTANCES.state_of(instance), InstanceStatus.SHUTOFF):
                INSTANCES.move(session, instance, InstanceStatus.ERROR, f"fenced: {reason}")
            INSTANCES.move(session, instance, InstanceStatus.SHUTOFF, f"fenced: {reason}")
        instance.power_state = "stopped"


def request_delete(session: Session, instance: Instance, project_id: str) -> Operation | None:
    """Move the instance to DELETING and enqueue its delete; None if already under way."""
    if INSTANCES.state_of(instance) in (InstanceStatus.DELETING, InstanceStatus.DELETED):
        return None
    INSTANCES.move(session, instance, InstanceStatus.DELETING, "delete requested")
    return enqueue(session, spec_for(instance.compute_type).delete, instance.id, project_id)


def _check_name_free(session: Session, project_id: str, name: str) -> None:
    taken = session.scalars(
        select(Instance.id).where(
            Instance.project_id == project_id,
            Instance.name == name,
            Instance.deleted_at.is_(None),
        )
    ).first()
    if taken:
        raise AlreadyExists(f"an instance named {name!r} already exists", code="instance_exists")


# -- acting ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Action:
    kind: OperationKind
    busy: InstanceStatus
    allowed_from: frozenset[InstanceStatus]


S = InstanceStatus
ACTIONS: Mapping[str, Action] = {
    "stop": Action(ops.INSTANCE_STOP, S.STOPPING, frozenset({S.ACTIVE, S.ERROR, S.UNKNOWN})),
    "start": Action(ops.INSTANCE_START, S.STARTING, frozenset({S.SHUTOFF, S.ERROR})),
    "reboot": Action(ops.INSTANCE_REBOOT, S.REBOOT, frozenset({S.ACTIVE, S.ERROR})),
}


def act(
    store: Store, caller: Caller, ident: str, action: str, force: bool = False
) -> InstanceAccepted:
    """Start, stop or reboot (``force``: a reset, where the compute type can)."""
    chosen = ACTIONS[action]
    with store.session() as session:
        instance = find_instance(session, caller, ident)
        if force:
            require_capability(instance.compute_type, Capability.FORCED_REBOOT)
        _require_state(instance, action, chosen.allowed_from)
        INSTANCES.move(session, instance, chosen.busy, f"{action} requested")
        params = {"force": True} if force else None
        op = enqueue(session, chosen.kind, instance.id, caller.project_id, params)
        return InstanceAccepted(operation=to_out(op), instance=to_out_instance(session, instance))


def resize(store: Store, caller: Caller, ident: str, flavor_name: str) -> InstanceAccepted:
    """Change an instance's vCPUs and RAM in place to a flavor of the same compute type."""
    with store.session() as session:
        instance = find_instance(session, caller, ident)
        require_capability(instance.compute_type, Capability.RESIZE)
        _require_state(instance, "resize", frozenset({S.ACTIVE, S.SHUTOFF}))
        flavor = flavor_by_name(session, flavor_name, caller.project_id)
        if flavor.compute_type != instance.compute_type:
            raise Conflict(
                f"flavor {flavor.name!r} is for {flavor.compute_type}, not "
                f"{instance.compute_type}: an instance keeps its compute type",
                code="flavor_mismatch",
            )
        quotas.require(
            session,
            instance.project_id,
            quotas.compute_need(flavor.vcpus, flavor.ram_mb, instance.disk_gb),
            credit=quotas.compute_need(instance.vcpus, instance.ram_mb, instance.disk_gb),
        )
        host = session.get_one(Host, cast(str, instance.host_id))
        fits_in_place(
            session,
            store.postgres,
            host.id,
            flavor,
            freed=(instance.vcpus, instance.ram_mb, instance.disk_gb),
        )
        instance.flavor_id, instance.vcpus, instance.ram_mb = flavor.id, flavor.vcpus, flavor.ram_mb
        INSTANCES.move(session, instance, S.RESIZE, f"resize to {flavor.name} requested")
        op = enqueue(session, ops.INSTANCE_RESIZE, instance.id, caller.project_id)
        return InstanceAccepted(operation=to_out(op), instance=to_out_instance(session, instance))


def _require_state(instance: Instance, action: str, allowed: frozenset[InstanceStatus]) -> None:
    current = INSTANCES.state_of(instance)
    if current not in allowed:
        raise Conflict(
            f"cannot {action} instance {instance.name!r} while it is {current.value}",
            code="invalid_state",
            status=current.value,
        )


def delete_instance(store: Store, caller: Caller, ident: str) -> InstanceAccepted:
    with store.session() as session:
        instance = find_instance(session, caller, ident)
        cluster = session.scalars(
            select(Cluster.name)
            .join(ClusterNode, ClusterNode.cluster_id == Cluster.id)
            .where(ClusterNode.instance_id == instance.id, ClusterNode.deleted_at.is_(None))
        ).first()
        if cluster is not None:
            raise Conflict(
                f"instance {instance.name!r} is a node of cluster {cluster!r}: "
                f"`onep cluster resize {cluster}` or `onep cluster delete {cluster}` removes it",
                code="instance_in_cluster",
            )
        op = request_delete(session, instance, caller.project_id)
        if op is None:
            raise Conflict(
                f"instance {instance.name!r} is already being deleted",
                code="invalid_state",
                status=instance.status,
            )
        return InstanceAccepted(operation=to_out(op), instance=to_out_instance(session, instance))


def console(
    store: Store, settings: Settings, caller: Caller, ident: str, tail: int = 200
) -> ConsoleOut:
    with store.session() as session:
        instance = find_instance(session, caller, ident)
        driver = driver_of(session, settings, _placed_host(session, instance))
        instance_id = instance.id
    return ConsoleOut(output=driver.console_log(instance_id, tail=tail))


def exec_in(
    store: Store, settings: Settings, caller: Caller, ident: str, argv: list[str], timeout: float
) -> ExecOut:
    with store.session() as session:
        instance = find_instance(session, caller, ident)
        require_capability(instance.compute_type, Capability.EXEC)
        if INSTANCES.state_of(instance) is not S.ACTIVE:
            raise Conflict(
                f"instance {instance.name!r} is {instance.status}, not ACTIVE",
                code="invalid_state",
            )
        driver = cast(SupportsExec, driver_of(session, settings, _placed_host(session, instance)))
        instance_id = instance.id
    result = driver.exec(instance_id, argv, timeout=timeout)
    return ExecOut(exit_code=result.exit_code, output=result.output)


def missing_volumes(store: Store, settings: Settings, instance_id: str) -> list[str]:
    """The instance's data volumes its host no longer has (asks the backend)."""
    with store.session() as session:
        instance = session.get_one(Instance, instance_id)
        if instance.host_id is None:
            return []
        driver = driver_of(session, settings, _placed_host(session, instance))
        volumes = [VolumeSpec(**v) for v in instance.volumes or ()]
    return driver.missing_volumes(instance_id, volumes)


def volume_growth_gb(session: Session, instance: Instance, name: str, size_gb: int) -> int:
    """How much more disk growing volume ``name`` to ``size_gb`` takes on the instance's
    host (0 when it is that size already); refused with ``409 capability_not_supported``
    where the compute type cannot grow storage, ``409 no_room_on_disk`` past the most its
    device holds (a node's data partition, up to the end of the node's disk), ``409
    no_room_on_host`` where its host has not that much room left. A node is one unit: its
    disk is the instance's alone, so where the device's own bound is known it is the only
    one."""
    require_capability(instance.compute_type, Capability.GROW_STORAGE)
    found = [VolumeSpec(**v) for v in instance.volumes or () if v["name"] == name]
    if not found:
        raise NotFound(f"instance {instance.name!r} has no volume {name!r}")
    volume = found[0]
    more = max(0, size_gb - volume.size_gb)
    if volume.max_size_gb is not None and size_gb > volume.max_size_gb:
        raise Conflict(
            f"the {name} volume of instance {instance.name!r} can grow to "
            f"{volume.max_size_gb} GB at most (the end of its {instance.compute_type} "
            f"disk), not {size_gb} GB",
            code="no_room_on_disk",
            max_size_gb=volume.max_size_gb,
        )
    host = _placed_host(session, instance)
    whole = spec_for(instance.compute_type).whole_host and volume.max_size_gb is not None
    if not whole and more > host.disk_gb - host.used_disk_gb:
        raise Conflict(
            f"host {host.name} of instance {instance.name!r} has "
            f"{host.disk_gb - host.used_disk_gb} GB of disk left, {more} GB more are needed",
            code="no_room_on_host",
        )
    return more


def grow_volume(
    store: Store, settings: Settings, instance_id: str, name: str, size_gb: int
) -> None:
    """Grow the instance's volume ``name`` to ``size_gb`` through its driver. The new size is
    recorded (and counted against its host's disk) first, so that a repair recreates it at
    that size and no other placement takes the room; a failed driver call is completed by
    a retry. Idempotent; never shrinks."""
    with store.session() as session:
        instance = session.get_one(Instance, instance_id)
        more = volume_growth_gb(session, instance, name, size_gb)
        if more:
            instance.disk_gb += more
            instance.volumes = [
                {**v, "size_gb": size_gb} if v["name"] == name else v
                for v in instance.volumes or ()
            ]
        driver = cast(
            SupportsGrowStorage, driver_of(session, settings, _placed_host(session, instance))
        )
        volumes = [VolumeSpec(**v) for v in instance.volumes or ()]
    driver.grow_volume(instance_id, volumes, name, size_gb)


def _placed_host(session: Session, instance: Instance) -> Host:
    if instance.host_id is None:
        raise Conflict(f"instance {instance.name!r} has no host yet", code="invalid_state")
    return session.get_one(Host, instance.host_id)


def snapshot(store: Store, caller: Caller, ident: str, name: str) -> InstanceAccepted:
    """Refused up front where the compute type has no snapshots; else an operation."""
    with store.session() as session:
        instance = find_instance(session, caller, ident)
        require_capability(instance.compute_type, Capability.SNAPSHOT)
        if not INSTANCES.is_stable(INSTANCES.state_of(instance)):
            raise Conflict(f"instance {instance.name!r} is {instance.status}", code="invalid_state")
        op = enqueue(session, ops.INSTANCE_SNAPSHOT, instance.id, caller.project_id, {"name": name})
        return InstanceAccepted(operation=to_out(op), instance=to_out_instance(session, instance))
