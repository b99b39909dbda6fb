"""Building an image for the hosts: the ``image.build`` operation.

The image package makes the root filesystem; this operation then makes the format each
compute type loads (its :class:`~oneplatform.compute.types.ComputeTypeSpec`'s
``prepare_image``) and loads it into every enabled host of the compute types that preload
(a whole-disk image is only made when the first node deploys it), so the first instance on a
host does not wait for an import.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneplatform.compute.drivers import driver_for
from oneplatform.compute.drivers.base import HostRef
from oneplatform.compute.hosts import host_ref
from oneplatform.compute.types import registered
from oneplatform.errors import ImageNotReady, PlatformError
from oneplatform.iam import Caller
from oneplatform.images.builder import artifact_for, build_rootfs
from oneplatform.images.catalog import IMAGES, ImageStatus, image_row, recipe_named, to_out
from oneplatform.images.recipes import load_recipe
from oneplatform.ops.engine import StepContext, enqueue
from oneplatform.ops.kinds import OPEN, Intent
from oneplatform.ops.service import to_out as op_out
from oneplatform.ops.steps import define
from oneplatform.schemas.compute import ComputeType
from oneplatform.schemas.images import ImageBuildAccepted
from oneplatform.store.db import Store
from oneplatform.store.models import Host, Image, Operation, Pool, new_id


def request_build(store: Store, caller: Caller | None, name: str) -> ImageBuildAccepted:
    """Start building an image unless it is built (instant) or being built (joins that)."""
    if caller is not None:
        caller.require_admin()
    recipe = recipe_named(name)
    with store.session() as session:
        row, op = _build(session, name)
        return ImageBuildAccepted(
            operation=op_out(op) if op is not None else None, image=to_out(recipe, row)
        )


def _build(session: Session, name: str) -> tuple[Image, Operation | None]:
    """The image's row, and the build that makes its current recipe (None: it is built)."""
    recipe = recipe_named(name)
    digest = recipe.content_hash()
    row = image_row(session, name)
    current = row is not None and row.content_hash == digest
    if row is not None and current and IMAGES.state_of(row) is ImageStatus.READY:
        return row, None
    if row is not None and current and IMAGES.state_of(row) is ImageStatus.BUILDING:
        running = _open_build(session, row.id)
        if running is not None:
            return row, running
    if row is None:
        row = Image(id=new_id(), name=name, content_hash=digest, ports=dict(recipe.ports))
        IMAGES.created(session, row, "build requested")
        session.add(row)
    else:
        IMAGES.move(session, row, ImageStatus.BUILDING, "build requested")
    row.content_hash, row.formats, row.ports = digest, {}, dict(recipe.ports)
    session.flush()
    return row, enqueue(session, IMAGE_BUILD, row.id, None, {"name": name, "hash": digest})


def image_for_create(session: Session, name: str) -> Image:
    """The image row a new instance may use, in the caller's transaction: built, or being
    built (the create waits for it). An image never built for its recipe's current content
    starts building now; one whose build failed is refused until it is built again."""
    row = image_row(session, name)
    if row is not None and row.content_hash == recipe_named(name).content_hash():
        if IMAGES.state_of(row) is ImageStatus.ERROR:
            raise ImageNotReady(
                f"image {name!r} failed to build: {row.status_message} "
                f"(`onep image build {name}` tries again)",
                image=name,
            )
        return row
    row, _ = _build(session, name)
    return row


def _open_build(session: Session, image_id: str) -> Operation | None:
    return session.scalars(
        select(Operation).where(
            Operation.resource_id == image_id,
            Operation.resource_type == IMAGE_BUILD.resource_type,
            Operation.status.in_(OPEN),
        )
    ).first()


# -- the build operation -------------------------------------------------------------------
def _step_rootfs(ctx: StepContext) -> None:
    build_rootfs(load_recipe(ctx.params["name"]), ctx.settings.images_dir, progress=ctx.progress)


def _enabled_hosts(ctx: StepContext, compute_type: ComputeType) -> list[HostRef]:
    with ctx.store.session() as session:
        return [
            host_ref(host, pool)
            for host, pool in session.execute(
                select(Host, Pool)
                .join(Pool, Pool.id == Host.pool_id)
                .where(Pool.compute_type == compute_type.value, Host.enabled.is_(True))
            ).all()
        ]


def _step_export(ctx: StepContext) -> None:
    """Make each preloading compute type's format and load it into its enabled hosts."""
    artifact = artifact_for(load_recipe(ctx.params["name"]), ctx.settings.images_dir)
    for spec in registered():
        if not spec.preload_images:
            continue
        hosts = _enabled_hosts(ctx, spec.compute_type)
        if not hosts:
            continue  # made on demand when a host of this type first needs it
        prepared = spec.prepare_image(ctx.settings, artifact, ctx.progress)
        for ref in hosts:
            ctx.progress(f"loading into {ref.name}")
            driver_for(ref).ensure_image(prepared)


def _step_finish(ctx: StepContext) -> None:
    artifact = artifact_for(load_recipe(ctx.params["name"]), ctx.settings.images_dir)
    rootfs = artifact.rootfs
    with ctx.transaction() as session:
        row = session.get_one(Image, ctx.resource_id)
        row.formats = {"oci": {"ref": artifact.ref}, "rootfs": {"path": str(rootfs)}}
        if artifact.vm is not None:
            row.formats["qcow2"] = {"disk": str(artifact.vm.disk)}
        row.size_bytes = rootfs.stat().st_size if rootfs and rootfs.exists() else 0
        IMAGES.move(session, row, ImageStatus.READY, "")


def _on_build_failure(session: Session, ctx: StepContext, err: PlatformError) -> None:
    IMAGES.fail(session, session.get_one(Image, ctx.resource_id), err.message)


IMAGE_BUILD = define(
    "image.build",
    "image",
    Intent.CREATE,
    ("rootfs", _step_rootfs),
    ("export", _step_export),
    ("finish", _step_finish),
    on_failure=_on_build_failure,
    description="Build a datastore image and load it into the hosts that run it.",
)
