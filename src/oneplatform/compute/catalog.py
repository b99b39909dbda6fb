"""Compute types, pools, hosts and flavors."""

from __future__ import annotations

import os

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oneplatform.compute.capabilities import CAPABILITY_HELP, Capability
from oneplatform.compute.drivers import driver_class, driver_for
from oneplatform.compute.drivers.base import ComputeDriver, HostInventory, HostRef
from oneplatform.compute.drivers.ssh import HostKeyUnknown, ssh_target
from oneplatform.compute.hosts import host_ref
from oneplatform.compute.ports import machine_of
from oneplatform.compute.scheduler import host_states
from oneplatform.compute.types import ComputeTypeSpec, registered, spec_for
from oneplatform.errors import (
    AlreadyExists,
    BackendError,
    CapabilityNotSupported,
    Conflict,
    InvalidInput,
    NotFound,
)
from oneplatform.iam import Caller
from oneplatform.schemas.compute import (
    CapabilityOut,
    ComputeType,
    ComputeTypeOut,
    FlavorCreate,
    FlavorOut,
    HostCreate,
    HostOut,
    PoolCreate,
    PoolOut,
)
from oneplatform.store.db import Store
from oneplatform.store.models import Flavor, Host, Pool


# -- compute types and capabilities -------------------------------------------------------
def describe_compute_type(cls: type[ComputeDriver]) -> ComputeTypeOut:
    return ComputeTypeOut(
        name=cls.compute_type,
        driver=cls.__name__,
        capabilities=[
            CapabilityOut(
                name=cap.value,
                supported=supported,
                description=CAPABILITY_HELP[cap],
                reason=cls.unsupported_reason(cap),
                limit=cls.LIMITS.get(cap) if supported else None,
            )
            for cap, supported in cls.capabilities().items()
        ],
    )


# The pools `onep up` makes (bootstrap); their names, with the compute types' (the built-in
# flavors are <type>.small …), are kept from clusters.
CONTAINER_POOL = "containers"
VM_POOL = "vms"
BAREMETAL_POOL = "baremetal"
BUILTIN_POOLS = frozenset({CONTAINER_POOL, VM_POOL, BAREMETAL_POOL})


def list_compute_types() -> list[ComputeTypeOut]:
    """Every registered compute type whose default driver works in this build."""
    found = []
    for spec in registered():
        try:
            found.append(describe_compute_type(driver_class(spec.compute_type)))
        except InvalidInput:
            continue
    return found


def require_capability(compute_type: str, capability: Capability) -> None:
    """Refuse up front, with the driver's reason, what a compute type cannot do."""
    reason = driver_class(ComputeType(compute_type)).unsupported_reason(capability)
    if reason is not None:
        raise CapabilityNotSupported(
            f"{compute_type} instances cannot {capability.value}: {reason}",
            capability=capability.value,
            compute_type=compute_type,
        )


# -- pools ---------------------------------------------------------------------------------
def create_pool(store: Store, caller: Caller, req: PoolCreate) -> PoolOut:
    caller.require_admin()
    spec_for(req.compute_type)
    driver_class(req.compute_type, req.settings.driver)  # refuses what this build cannot drive
    try:
        with store.session() as session:
            pool = Pool(
                name=req.name, compute_type=req.compute_type.value, settings=req.settings_dict()
            )
            session.add(pool)
            session.flush()
            return PoolOut.model_validate(pool)
    except IntegrityError:
        raise AlreadyExists(f"pool {req.name!r} already exists", code="pool_exists") from None


def list_pools(store: Store, caller: Caller) -> list[PoolOut]:
    caller.require_admin()
    with store.session() as session:
        return [
            PoolOut.model_validate(p) for p in session.scalars(select(Pool).order_by(Pool.name))
        ]


def _pool_by_name(session: Session, name: str) -> Pool:
    pool = session.scalars(select(Pool).where(Pool.name == name)).first()
    if pool is None:
        raise NotFound(f"pool {name!r} not found", code="pool_not_found")
    return pool


# -- hosts ---------------------------------------------------------------------------------
def register_host(store: Store, caller: Caller, req: HostCreate) -> HostOut:
    """Add a host to a pool after asking its backend for its inventory."""
    caller.require_admin()
    bind_address = str(req.bind_address)
    with store.session() as session:
        pool = _pool_by_name(session, req.pool)
        if spec_for(pool.compute_type).enrolled_hosts:
            raise Conflict(
                f"pool {pool.name!r} is a {pool.compute_type} pool: its hosts are added by "
                "enrolling nodes (onep node enroll), not as hosts",
                code="hosts_are_enrolled",
            )
        if pool.project_id is not None:
            raise Conflict(
                f"pool {pool.name!r} is a cluster's: its hosts are the cluster's nodes, added "
                "and removed by `onep cluster resize`",
                code="pool_of_a_cluster",
            )
        _check_uri(spec_for(pool.compute_type), req.uri)
        if session.scalars(select(Host).where(Host.name == req.name)).first():
            raise AlreadyExists(f"host {req.name!r} already exists", code="host_exists")
        own = _own_settings(req)
        probe = Host(
            id="probe", name=req.name, uri=req.uri, bind_address=bind_address, settings=own
        )
        ref = host_ref(probe, pool)
    inventory = _probe(ref)  # I/O outside any transaction
    try:
        with store.session() as session:
            pool = _pool_by_name(session, req.pool)
            host = Host(
                name=req.name,
                pool_id=pool.id,
                uri=req.uri,
                machine=machine_of(req.uri),
                bind_address=bind_address,
                vcpus=inventory.vcpus,
                ram_mb=inventory.ram_mb,
                disk_gb=inventory.disk_gb,
                traits=req.traits,
                zone=req.zone,
                rack=req.rack,
                port_range_start=req.port_range_start,
                port_range_end=req.port_range_end,
                settings=own,
            )
            session.add(host)
            session.flush()
            return _host_out(host, pool)
    except IntegrityError:
        raise AlreadyExists(f"host {req.name!r} already exists", code="host_exists") from None


def _own_settings(req: HostCreate) -> dict[str, str]:
    """The host's own driver settings: how it is reached over SSH, checked here first."""
    own = {
        key: value
        for key, value in (("identity_file", req.identity_file), ("host_key", req.host_key))
        if value
    }
    if own and ssh_target(req.uri) is None:
        raise InvalidInput(
            f"identity_file and host_key are for hosts reached over SSH (ssh://, qemu+ssh://), "
            f"not {req.uri}",
            code="invalid_input",
        )
    if req.identity_file and not os.access(req.identity_file, os.R_OK):
        raise InvalidInput(
            f"identity file {req.identity_file} is not a file this platform can read",
            code="identity_file_not_found",
        )
    return own


def _probe(ref: HostRef) -> HostInventory:
    """The host's inventory, asked of its driver; a host that does not answer is the
    caller's error (a wrong address, key or socket path), and nothing is stored."""
    try:
        return driver_for(ref).inventory()
    except BackendError as exc:
        code = "host_key_unknown" if isinstance(exc, HostKeyUnknown) else "host_unreachable"
        raise InvalidInput(
            f"host {ref.name!r} did not answer at {ref.uri}, so it was not added: {exc.message}",
            code=code,
        ) from exc


def _check_uri(spec: ComputeTypeSpec, uri: str) -> None:
    scheme = uri.split("://", 1)[0]
    if scheme not in spec.host_schemes:
        raise InvalidInput(
            f"a {spec.compute_type.value} host's URI starts with one of "
            f"{', '.join(f'{s}://' for s in sorted(spec.host_schemes))}, not {scheme}://",
            code="invalid_input",
        )


def _host_out(host: Host, pool: Pool, used: tuple[int, int, int] = (0, 0, 0)) -> HostOut:
    return HostOut(
        id=host.id,
        name=host.name,
        pool=pool.name,
        compute_type=pool.compute_type,
        uri=host.uri,
        bind_address=host.bind_address,
        identity_file=(host.settings or {}).get("identity_file"),
        host_key=(host.settings or {}).get("host_key"),
        vcpus=host.vcpus,
        ram_mb=host.ram_mb,
        disk_gb=host.disk_gb,
        used_vcpus=used[0],
        used_ram_mb=used[1],
        used_disk_gb=used[2],
        traits=list(host.traits or []),
        zone=host.zone,
        rack=host.rack,
        enabled=host.enabled,
    )


def list_hosts(store: Store, caller: Caller) -> list[HostOut]:
    caller.require_admin()
    with store.session() as session:
        return [
            _host_out(s.host, s.pool, (s.used_vcpus, s.used_ram_mb, s.used_disk_gb))
            for s in host_states(session, lock=False)
        ]


# -- flavors -------------------------------------------------------------------------------
def create_flavor(store: Store, caller: Caller, req: FlavorCreate) -> FlavorOut:
    caller.require_admin()
    spec_for(req.compute_type)
    driver_class(req.compute_type)
    try:
        with store.session() as session:
            flavor = Flavor(**req.model_dump(mode="json"))
            session.add(flavor)
            session.flush()
            return FlavorOut.model_validate(flavor)
    except IntegrityError:
        raise AlreadyExists(f"flavor {req.name!r} already exists", code="flavor_exists") from None


def list_flavors(store: Store, caller: Caller | None = None) -> list[FlavorOut]:
    """Every project's flavors, and the caller's project's own (its clusters')."""
    with store.session() as session:
        rows = session.scalars(
            select(Flavor)
            .where(visible_to(caller.project_id if caller else None))
            .order_by(Flavor.compute_type, Flavor.vcpus, Flavor.name)
        )
        return [FlavorOut.model_validate(f) for f in rows]


def visible_to(project_id: str | None) -> ColumnElement[bool]:
    """The flavors a project may use: every project's, and its own."""
    if project_id is None:
        return Flavor.project_id.is_(None)
    return or_(Flavor.project_id.is_(None), Flavor.project_id == project_id)


def flavor_by_name(session: Session, name: str, project_id: str | None = None) -> Flavor:
    """The flavor named ``name`` that ``project_id`` may use (a project's own flavor is
    not found for any other project, nor without one)."""
    flavor = session.scalars(
        select(Flavor).where(Flavor.name == name, visible_to(project_id))
    ).first()
    if flavor is None:
        raise NotFound(f"flavor {name!r} not found", code="flavor_not_found")
    return flavor
