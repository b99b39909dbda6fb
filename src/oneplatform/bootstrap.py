"""Bootstrap: the embedded defaults `onep up` makes sure of: pools, hosts, flavors, images,
and the emulated bare-metal nodes."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from sqlalchemy import select

from oneplatform.baremetal import nodes
from oneplatform.compute.catalog import BAREMETAL_POOL, CONTAINER_POOL, VM_POOL
from oneplatform.compute.drivers import driver_class, driver_for
from oneplatform.compute.hosts import host_ref
from oneplatform.compute.images import request_build
from oneplatform.compute.ports import machine_of
from oneplatform.config import Settings
from oneplatform.errors import PlatformError
from oneplatform.iam import ADMIN, Caller
from oneplatform.images.recipes import list_recipes
from oneplatform.schemas.compute import ComputeType
from oneplatform.schemas.nodes import NodeEnroll, PortTarget, ProvisioningNic
from oneplatform.store.db import Store
from oneplatform.store.models import Flavor, Host, Node, Pool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DefaultFlavor:
    name: str
    compute_type: ComputeType
    vcpus: int
    ram_mb: int
    disk_gb: int


FLAVORS = (
    DefaultFlavor("container.small", ComputeType.CONTAINER, 1, 512, 2),
    DefaultFlavor("container.medium", ComputeType.CONTAINER, 2, 2048, 10),
    DefaultFlavor("container.large", ComputeType.CONTAINER, 4, 4096, 20),
    DefaultFlavor("vm.small", ComputeType.VM, 1, 1024, 5),
    DefaultFlavor("vm.medium", ComputeType.VM, 2, 2048, 10),
    DefaultFlavor("baremetal.small", ComputeType.BAREMETAL, 1, 1024, 4),
)
LOCAL_PODMAN = "local-podman"
LOCAL_LIBVIRT = "local-libvirt"


def ensure_defaults(store: Store, settings: Settings) -> list[str]:
    """Idempotent: creates what is missing, never touches what an operator changed.

    Returns warnings (e.g. a local libvirt that is not running: its pool is skipped).
    """
    warnings: list[str] = []
    pools = [
        (
            CONTAINER_POOL,
            ComputeType.CONTAINER,
            LOCAL_PODMAN,
            "local://",
            {"runtime": settings.podman_runtime},
        ),
        (VM_POOL, ComputeType.VM, LOCAL_LIBVIRT, settings.libvirt_uri, {}),
    ]
    ready: set[ComputeType] = set()
    for pool_name, compute_type, host_name, uri, pool_settings in pools:
        try:
            _ensure_pool_and_host(
                store, settings, pool_name, compute_type, host_name, uri, pool_settings
            )
            ready.add(compute_type)
        except PlatformError as err:
            warnings.append(f"{compute_type.value}: {err.message} (pool {pool_name!r} skipped)")
    try:
        _ensure_baremetal_pool(store)
        ready.add(ComputeType.BAREMETAL)
    except PlatformError as err:
        warnings.append(f"baremetal: {err.message} (pool {BAREMETAL_POOL!r} skipped)")
    with store.session() as session:
        have = set(session.scalars(select(Flavor.name)))
        for f in FLAVORS:
            if f.name not in have and f.compute_type in ready:
                session.add(
                    Flavor(
                        name=f.name,
                        compute_type=f.compute_type.value,
                        vcpus=f.vcpus,
                        ram_mb=f.ram_mb,
                        disk_gb=f.disk_gb,
                        traits=[],
                    )
                )
    return warnings


def _ensure_pool_and_host(
    store: Store,
    settings: Settings,
    pool_name: str,
    compute_type: ComputeType,
    host_name: str,
    uri: str,
    pool_settings: dict[str, str],
) -> None:
    driver_class(compute_type)  # raises when this build cannot drive the type
    with store.session() as session:
        pool = session.scalars(select(Pool).where(Pool.name == pool_name)).first()
        if pool is not None and session.scalars(select(Host).where(Host.name == host_name)).first():
            return
        probe_pool = pool or Pool(
            name=pool_name, compute_type=compute_type.value, settings=pool_settings
        )
        probe = Host(id="probe", name=host_name, uri=uri, bind_address=settings.bind_address)
        ref = host_ref(probe, probe_pool)
    inventory = driver_for(ref).inventory()  # I/O outside any transaction; may refuse
    with store.session() as session:
        pool = session.scalars(select(Pool).where(Pool.name == pool_name)).first()
        if pool is None:
            pool = Pool(name=pool_name, compute_type=compute_type.value, settings=pool_settings)
            session.add(pool)
            session.flush()
        session.add(
            Host(
                name=host_name,
                pool_id=pool.id,
                uri=uri,
                machine=machine_of(uri),
                bind_address=settings.bind_address,
                vcpus=inventory.vcpus,
                ram_mb=inventory.ram_mb,
                disk_gb=inventory.disk_gb,
                traits=[],
                port_range_start=settings.port_range_start,
                port_range_end=settings.port_range_end,
            )
        )
    log.info("registered %s as host %s in pool %s", uri, host_name, pool_name)


def _ensure_baremetal_pool(store: Store) -> None:
    """A bare-metal pool has no host until nodes are enrolled (each node is a host)."""
    driver_class(ComputeType.BAREMETAL)
    with store.session() as session:
        if session.scalars(select(Pool).where(Pool.name == BAREMETAL_POOL)).first() is None:
            session.add(
                Pool(name=BAREMETAL_POOL, compute_type=ComputeType.BAREMETAL.value, settings={})
            )


def enroll_lab_nodes(store: Store, settings: Settings) -> list[str]:
    """Enroll the emulated nodes that `scripts/bmlab.sh up` made (Redfish emulator on
    127.0.0.1), unless enrolled already: those take the lab's port map again (a newer lab
    forwards more guest ports). Returns the enroll operation ids."""
    path = settings.bmlab_file
    if not path.exists():
        return []
    lab = json.loads(path.read_text())
    with store.session() as session:
        enrolled = {node.name: node for node in session.scalars(select(Node))}
        for n in lab.get("nodes", []):
            node = enrolled.get(str(n["name"]))
            forwards = {g: {"host": "127.0.0.1", "port": int(p)} for g, p in n["ports"].items()}
            if node is not None and node.port_map != forwards:
                node.port_map = forwards
        have = set(enrolled)
        admin = session.scalars(select(Pool.id).where(Pool.name == BAREMETAL_POOL)).first()
    if admin is None:
        return []
    caller = Caller(project_id="", project_name=ADMIN, role=ADMIN, token_name="bootstrap")
    started = []
    for n in lab.get("nodes", []):
        name = str(n["name"])
        if name in have:
            continue
        req = NodeEnroll(
            name=name,
            pool=BAREMETAL_POOL,
            bmc_address=n["bmc_url"],
            bmc_system_id=n["system_id"],
            bmc_username=n.get("username", ""),
            bmc_password=n.get("password", ""),
            port_map={g: PortTarget(host="127.0.0.1", port=int(p)) for g, p in n["ports"].items()},
            provisioning=(
                ProvisioningNic.model_validate(n["provisioning"]) if n.get("provisioning") else None
            ),
        )
        started.append(nodes.enroll(store, settings, caller, req).operation.id)
    return started


def ensure_images(store: Store, settings: Settings) -> list[str]:
    """Start building each image of ``settings.images`` that is not built yet; returns the
    operation ids."""
    wanted = settings.images.strip()
    names = (
        list_recipes()
        if wanted == "*"
        else [name.strip() for name in wanted.split(",") if name.strip()]
    )
    started = []
    for name in names:
        accepted = request_build(store, None, name)
        if accepted.operation is not None:
            started.append(accepted.operation.id)
    return started
