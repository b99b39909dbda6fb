"""The embedded defaults `onep up` makes sure of: pools, hosts, flavors, images."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select

from oneplatform.compute.catalog import host_ref
from oneplatform.compute.drivers import driver_for
from oneplatform.compute.states import ComputeType
from oneplatform.config import Settings
from oneplatform.images import service as images
from oneplatform.images.recipes import list_recipes
from oneplatform.store.db import Store
from oneplatform.store.models import Flavor, Host, Pool

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
)
CONTAINER_POOL = "containers"
LOCAL_PODMAN = "local-podman"


def ensure_defaults(store: Store, settings: Settings) -> None:
    """Idempotent: creates what is missing, never touches what an operator changed."""
    _ensure_container_pool(store, settings)
    with store.session() as session:
        have = set(session.scalars(select(Flavor.name)))
        for f in FLAVORS:
            if f.name not in have:
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


def _ensure_container_pool(store: Store, settings: Settings) -> None:
    with store.session() as session:
        pool = session.scalars(select(Pool).where(Pool.name == CONTAINER_POOL)).first()
        if pool is None:
            pool = Pool(
                name=CONTAINER_POOL,
                compute_type=ComputeType.CONTAINER.value,
                settings={"runtime": settings.podman_runtime},
            )
            session.add(pool)
            session.flush()
        if session.scalars(select(Host).where(Host.name == LOCAL_PODMAN)).first():
            return
        probe = Host(
            id="probe", name=LOCAL_PODMAN, uri="local://", bind_address=settings.bind_address
        )
        ref = host_ref(probe, pool)
        pool_id = pool.id
    inventory = driver_for(ref).inventory()
    with store.session() as session:
        session.add(
            Host(
                name=LOCAL_PODMAN,
                pool_id=pool_id,
                uri="local://",
                bind_address=settings.bind_address,
                vcpus=inventory.vcpus,
                ram_mb=inventory.ram_mb,
                disk_gb=inventory.disk_gb,
                traits=[],
                port_range_start=settings.port_range_start,
                port_range_end=settings.port_range_end,
            )
        )
    log.info("registered the local Podman as host %s in pool %s", LOCAL_PODMAN, CONTAINER_POOL)


def ensure_images(store: Store) -> list[str]:
    """Start building every image that is not built yet; returns the operation ids."""
    started = []
    for name in list_recipes():
        accepted = images.request_build(store, None, name)
        if accepted.operation is not None:
            started.append(accepted.operation.id)
    return started
