"""Instances: create, read, act, delete. Writes desired state plus an operation and returns."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Mapping
from typing import cast

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oneplatform.compute import operations as ops
from oneplatform.compute.capabilities import Capability
from oneplatform.compute.catalog import flavor_by_name, host_ref, require_capability
from oneplatform.compute.drivers import driver_class, driver_for
from oneplatform.compute.drivers.base import HostRef, SupportsExec, VolumeSpec
from oneplatform.compute.lifecycle import set_status
from oneplatform.compute.scheduler import select_host
from oneplatform.compute.states import InstanceStatus
from oneplatform.errors import AlreadyExists, Conflict, NotFound, NoValidHost
from oneplatform.iam import Caller
from oneplatform.images.service import image_for_create
from oneplatform.ops.engine import enqueue
from oneplatform.ops.model import OperationKind
from oneplatform.ops.service import to_out
from oneplatform.schemas.compute import ComputeType
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
    Event,
    Flavor,
    Host,
    Image,
    Instance,
    Operation,
    Pool,
    PortAllocation,
)


# -- reading ---------------------------------------------------------------------------------
def endpoints(session: Session, instance: Instance, host: Host | None) -> list[Endpoint]:
    if host is None:
        return []
    rows = session.scalars(
        select(PortAllocation)
        .where(PortAllocation.instance_id == instance.id)
        .order_by(PortAllocation.name)
    )
    return [Endpoint(name=p.name, host=host.bind_address, port=p.host_port) for p in rows]


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
        endpoints=endpoints(session, instance, host),
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
            flavor = flavor_by_name(session, req.flavor)
            instance, op = place_instance(
                session, store, caller.project_id, req.name, flavor, req.image
            )
            return InstanceAccepted(
                operation=to_out(op), instance=to_out_instance(session, instance)
            )
    except IntegrityError:
        raise AlreadyExists(
            f"an instance named {req.name!r} already exists", code="instance_exists"
        ) from None


def place_instance(
    session: Session,
    store: Store,
    project_id: str,
    name: str,
    flavor: Flavor,
    image_name: str,
    *,
    managed_by: str | None = None,
    bundle_enc: str | None = None,
    volumes: list[VolumeSpec] | None = None,
) -> tuple[Instance, Operation]:
    """Place a new instance and enqueue its create, in the caller's transaction.

    Used by the compute API and by services (dbaas) that own their instances. Volumes count
    against the host's disk beside the flavor's own disk.
    """
    driver_class(ComputeType(flavor.compute_type))
    image = image_for_create(session, image_name)
    _check_name_free(session, project_id, name)
    extra_disk = sum(v.size_gb for v in volumes or ())
    host = select_host(session, flavor, lock=store.postgres, extra_disk_gb=extra_disk)
    instance = Instance(
        project_id=project_id,
        name=name,
        flavor_id=flavor.id,
        image_id=image.id,
        host_id=host.id,
        compute_type=flavor.compute_type,
        status=InstanceStatus.BUILD.value,
        vcpus=flavor.vcpus,
        ram_mb=flavor.ram_mb,
        disk_gb=flavor.disk_gb + extra_disk,
        managed_by=managed_by,
        bundle_enc=bundle_enc,
        volumes=[dataclasses.asdict(v) for v in volumes or ()],
    )
    session.add(instance)
    session.flush()
    if flavor.compute_type == ComputeType.BAREMETAL.value:
        _claim_node(session, host, instance)
    allocate_ports(session, host, instance, image.ports)
    session.add(
        Event(
            resource_type="instance",
            resource_id=instance.id,
            from_status=None,
            to_status=InstanceStatus.BUILD.value,
            message=f"placed on {host.name}",
        )
    )
    op = enqueue(session, ops.create_kind(flavor.compute_type), instance.id, project_id)
    return instance, op


def _claim_node(session: Session, host: Host, instance: Instance) -> None:
    """A node is one unit: taken off the scheduler until it is cleaned again."""
    from oneplatform.nodes.common import node_of_host

    node_of_host(session, host.id).instance_id = instance.id
    host.enabled = False


def request_delete(session: Session, instance: Instance, project_id: str) -> Operation | None:
    """Move the instance to DELETING and enqueue its delete; None if already under way."""
    current = InstanceStatus(instance.status)
    if current in (InstanceStatus.DELETING, InstanceStatus.DELETED):
        return None
    set_status(session, instance, InstanceStatus.DELETING, "delete requested")
    return enqueue(session, ops.delete_kind(instance.compute_type), instance.id, project_id)


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


def allocate_ports(
    session: Session, host: Host, instance: Instance, services: Mapping[str, int]
) -> None:
    """Give every service port of the instance a free host port, unique per host.

    A bare-metal node's ports are where its network puts them (its port map)."""
    if host.uri.startswith("node://"):
        _node_ports(session, host, instance, services)
        return
    used = set(
        session.scalars(select(PortAllocation.host_port).where(PortAllocation.host_id == host.id))
    )
    candidates = (p for p in range(host.port_range_start, host.port_range_end + 1) if p not in used)
    for name, guest_port in sorted(services.items()):
        port = next((p for p in candidates if _bindable(host, p)), None)
        if port is None:
            raise NoValidHost(f"host {host.name!r} has no free port left", code="no_free_port")
        session.add(
            PortAllocation(
                host_id=host.id,
                host_port=port,
                instance_id=instance.id,
                name=name,
                guest_port=int(guest_port),
            )
        )
    session.flush()


def _node_ports(
    session: Session, host: Host, instance: Instance, services: Mapping[str, int]
) -> None:
    from oneplatform.nodes.common import node_of_host

    port_map = node_of_host(session, host.id).port_map or {}
    for name, guest_port in sorted(services.items()):
        target = port_map.get(str(guest_port))
        if target is None:
            raise NoValidHost(
                f"node {host.name!r} has no way to reach guest port {guest_port}",
                code="no_free_port",
            )
        session.add(
            PortAllocation(
                host_id=host.id,
                host_port=int(target["port"]),
                instance_id=instance.id,
                name=name,
                guest_port=int(guest_port),
            )
        )
    session.flush()


def _bindable(host: Host, port: int) -> bool:
    """On a local host, skip ports that something outside the platform already holds."""
    if not host.uri.startswith("local"):
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host.bind_address, port))
        except OSError:
            return False
    return True


# -- acting ----------------------------------------------------------------------------------
ACTIONS: dict[str, tuple[OperationKind, InstanceStatus, frozenset[InstanceStatus]]] = {
    "stop": (
        ops.INSTANCE_STOP,
        InstanceStatus.STOPPING,
        frozenset({InstanceStatus.ACTIVE, InstanceStatus.ERROR, InstanceStatus.UNKNOWN}),
    ),
    "start": (
        ops.INSTANCE_START,
        InstanceStatus.STARTING,
        frozenset({InstanceStatus.SHUTOFF, InstanceStatus.ERROR}),
    ),
    "reboot": (
        ops.INSTANCE_REBOOT,
        InstanceStatus.REBOOT,
        frozenset({InstanceStatus.ACTIVE, InstanceStatus.ERROR}),
    ),
}


def act(store: Store, caller: Caller, ident: str, action: str) -> InstanceAccepted:
    kind, busy_status, allowed_from = ACTIONS[action]
    with store.session() as session:
        instance = find_instance(session, caller, ident)
        current = InstanceStatus(instance.status)
        if current not in allowed_from:
            raise Conflict(
                f"cannot {action} instance {instance.name!r} while it is {current.value}",
                code="invalid_state",
                status=current.value,
            )
        set_status(session, instance, busy_status, f"{action} requested")
        op = enqueue(session, kind, instance.id, caller.project_id)
        return InstanceAccepted(operation=to_out(op), instance=to_out_instance(session, instance))


def delete_instance(store: Store, caller: Caller, ident: str) -> InstanceAccepted:
    with store.session() as session:
        instance = find_instance(session, caller, ident)
        op = request_delete(session, instance, caller.project_id)
        if op is None:
            raise Conflict(
                f"instance {instance.name!r} is already being deleted",
                code="invalid_state",
                status=instance.status,
            )
        return InstanceAccepted(operation=to_out(op), instance=to_out_instance(session, instance))


def _live_ref(store: Store, caller: Caller, ident: str) -> tuple[Instance, HostRef]:
    with store.session() as session:
        instance = find_instance(session, caller, ident)
        if instance.host_id is None:
            raise Conflict(f"instance {instance.name!r} has no host yet", code="invalid_state")
        host = session.get_one(Host, instance.host_id)
        return instance, host_ref(host, session.get_one(Pool, host.pool_id))


def console(store: Store, caller: Caller, ident: str, tail: int = 200) -> ConsoleOut:
    _instance, ref = _live_ref(store, caller, ident)
    return ConsoleOut(output=driver_for(ref).console_log(_instance.id, tail=tail))


def exec_in(store: Store, caller: Caller, ident: str, argv: list[str], timeout: float) -> ExecOut:
    with store.session() as session:
        require_capability(find_instance(session, caller, ident).compute_type, Capability.EXEC)
    instance, ref = _live_ref(store, caller, ident)
    if instance.status != InstanceStatus.ACTIVE.value:
        raise Conflict(
            f"instance {instance.name!r} is {instance.status}, not ACTIVE", code="invalid_state"
        )
    driver = cast(SupportsExec, driver_for(ref))
    result = driver.exec(instance.id, argv, timeout=timeout)
    return ExecOut(exit_code=result.exit_code, output=result.output)


def snapshot(store: Store, caller: Caller, ident: str, name: str) -> InstanceAccepted:
    """Refused up front where the compute type has no snapshots; else an operation."""
    with store.session() as session:
        instance = find_instance(session, caller, ident)
        require_capability(instance.compute_type, Capability.SNAPSHOT)
        if InstanceStatus(instance.status).is_busy:
            raise Conflict(f"instance {instance.name!r} is {instance.status}", code="invalid_state")
        op = enqueue(session, ops.INSTANCE_SNAPSHOT, instance.id, caller.project_id, {"name": name})
        return InstanceAccepted(operation=to_out(op), instance=to_out_instance(session, instance))
