"""Small row factories for tests. Each takes an open session, adds a row and flushes it.

Rows come back attached to the caller's session; the store's sessions do not expire on
commit, so their attributes stay readable after the ``with store.session()`` block.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from sqlalchemy.orm import Session

from oneplatform.compute.states import InstanceStatus
from oneplatform.iam import ADMIN, MEMBER, Caller
from oneplatform.images.catalog import ImageStatus
from oneplatform.images.recipes import load_recipe
from oneplatform.store.models import Flavor, Host, Image, Instance, Pool, Project, utcnow

DEFAULT_IMAGE = "postgresql-15"
_seq = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_seq)}"


def _add(session: Session, row: Any) -> Any:
    session.add(row)
    session.flush()
    return row


def make_project(session: Session, name: str | None = None) -> Project:
    return _add(session, Project(name=name or unique("project")))


def caller_for(project: Project, role: str = ADMIN) -> Caller:
    """A Caller of ``project`` (admin by default), as authenticate() would return it."""
    assert role in (ADMIN, MEMBER)
    return Caller(project.id, project.name, role, f"{project.name}-{role}")


def make_pool(session: Session, compute_type: str = "container", name: str | None = None) -> Pool:
    return _add(session, Pool(name=name or unique("pool"), compute_type=compute_type))


def make_host(
    session: Session,
    pool: Pool | None = None,
    *,
    vcpus: int = 8,
    ram_mb: int = 16384,
    disk_gb: int = 200,
    cpu_allocation_ratio: float = 1.0,
    ram_allocation_ratio: float = 1.0,
    traits: Iterable[str] = (),
    enabled: bool = True,
    name: str | None = None,
    uri: str | None = None,
    compute_type: str = "container",
    zone: str = "",
    rack: str = "",
) -> Host:
    """A host with the given capacity, in ``pool`` or in a new pool of ``compute_type``.

    The uri starts with ``test://``: allocate_ports only probes sockets on ``local`` hosts.
    """
    if pool is None:
        pool = make_pool(session, compute_type)
    name = name or unique("host")
    return _add(
        session,
        Host(
            name=name,
            pool_id=pool.id,
            uri=uri or f"test://{name}",
            vcpus=vcpus,
            ram_mb=ram_mb,
            disk_gb=disk_gb,
            cpu_allocation_ratio=cpu_allocation_ratio,
            ram_allocation_ratio=ram_allocation_ratio,
            traits=list(traits),
            enabled=enabled,
            zone=zone,
            rack=rack,
        ),
    )


def make_flavor(
    session: Session,
    *,
    vcpus: int = 1,
    ram_mb: int = 1024,
    disk_gb: int = 10,
    traits: Iterable[str] = (),
    compute_type: str = "container",
    name: str | None = None,
) -> Flavor:
    return _add(
        session,
        Flavor(
            name=name or unique("flavor"),
            compute_type=compute_type,
            vcpus=vcpus,
            ram_mb=ram_mb,
            disk_gb=disk_gb,
            traits=list(traits),
        ),
    )


def make_ready_image(session: Session, recipe: str = DEFAULT_IMAGE) -> Image:
    """The READY image row of a packaged recipe, as a finished build leaves it: its
    content_hash is the recipe's, so images.catalog.image_for_create accepts it."""
    r = load_recipe(recipe)
    return _add(
        session,
        Image(
            name=r.name,
            content_hash=r.content_hash(),
            status=ImageStatus.READY.value,
            ports=dict(r.ports),
        ),
    )


def make_instance(
    session: Session,
    project: Project,
    flavor: Flavor,
    image: Image,
    host: Host | None,
    *,
    name: str | None = None,
    status: InstanceStatus = InstanceStatus.ACTIVE,
    deleted: bool = False,
) -> Instance:
    """An instance row holding ``flavor``'s capacity on ``host`` (no operation, no ports)."""
    return _add(
        session,
        Instance(
            project_id=project.id,
            name=name or unique("instance"),
            flavor_id=flavor.id,
            image_id=image.id,
            host_id=host.id if host is not None else None,
            compute_type=flavor.compute_type,
            status=(InstanceStatus.DELETED if deleted else status).value,
            vcpus=flavor.vcpus,
            ram_mb=flavor.ram_mb,
            disk_gb=flavor.disk_gb,
            deleted_at=utcnow() if deleted else None,
        ),
    )
