"""The image catalog: recipes, what has been built from them, and the build operation."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneplatform.api.schemas import ImageBuildAccepted, ImageOut
from oneplatform.compute.drivers import driver_for
from oneplatform.compute.drivers.base import ImageArtifact
from oneplatform.compute.states import ComputeType
from oneplatform.config import Settings
from oneplatform.errors import ImageNotReady, NotFound, PlatformError
from oneplatform.iam import Caller
from oneplatform.images.builder import artifact_for, build_rootfs
from oneplatform.images.recipes import Recipe, list_recipes, load_recipe
from oneplatform.ops.engine import StepContext, enqueue
from oneplatform.ops.model import OperationKind, OperationStatus, register
from oneplatform.ops.service import to_out
from oneplatform.store.db import Store
from oneplatform.store.models import Host, Image, Operation, Pool

BUILDING = "BUILDING"
READY = "READY"
ERROR = "ERROR"
NOT_BUILT = "NOT_BUILT"


def _out(recipe: Recipe, row: Image | None) -> ImageOut:
    current = row is not None and row.content_hash == recipe.content_hash()
    return ImageOut(
        name=recipe.name,
        description=recipe.description,
        status=row.status if row is not None and current else NOT_BUILT,
        status_message=row.status_message if row is not None and current else "",
        content_hash=recipe.content_hash(),
        formats=dict(row.formats) if row is not None and current else {},
        ports=dict(recipe.ports),
        size_bytes=row.size_bytes if row is not None and current else 0,
    )


def list_images(store: Store) -> list[ImageOut]:
    with store.session() as session:
        rows = {r.name: r for r in session.scalars(select(Image))}
        return [_out(load_recipe(name), rows.get(name)) for name in list_recipes()]


def get_image(store: Store, name: str) -> ImageOut:
    recipe = _recipe(name)
    with store.session() as session:
        return _out(recipe, _row(session, name))


def _recipe(name: str) -> Recipe:
    try:
        return load_recipe(name)
    except NotFound:
        raise NotFound(f"image {name!r} not found", code="image_not_found") from None


def _row(session: Session, name: str) -> Image | None:
    return session.scalars(select(Image).where(Image.name == name)).first()


def request_build(store: Store, caller: Caller | None, name: str) -> ImageBuildAccepted:
    """Start building an image unless it is built (instant) or being built (joins that)."""
    if caller is not None:
        caller.require_admin()
    recipe = _recipe(name)
    digest = recipe.content_hash()
    with store.session() as session:
        row = _row(session, name)
        if row is not None and row.content_hash == digest and row.status == READY:
            return ImageBuildAccepted(operation=None, image=_out(recipe, row))
        if row is not None and row.content_hash == digest and row.status == BUILDING:
            running = _open_build(session, row.id)
            if running is not None:
                return ImageBuildAccepted(operation=to_out(running), image=_out(recipe, row))
        if row is None:
            row = Image(name=name, content_hash=digest, status=BUILDING, ports=dict(recipe.ports))
            session.add(row)
            session.flush()
        row.content_hash, row.status, row.status_message = digest, BUILDING, ""
        row.formats, row.ports = {}, dict(recipe.ports)
        op = enqueue(session, IMAGE_BUILD, row.id, None, {"name": name, "hash": digest})
        return ImageBuildAccepted(operation=to_out(op), image=_out(recipe, row))


def _open_build(session: Session, image_id: str) -> Operation | None:
    return session.scalars(
        select(Operation).where(
            Operation.resource_id == image_id,
            Operation.kind == IMAGE_BUILD.name,
            Operation.status.in_([OperationStatus.PENDING.value, OperationStatus.RUNNING.value]),
        )
    ).first()


def ready_artifact(session: Session, settings: Settings, image: Image) -> ImageArtifact:
    """The artifact to load on a host; ImageNotReady while the image is not READY."""
    if image.status != READY:
        raise ImageNotReady(
            f"image {image.name!r} is {image.status}: {image.status_message}".rstrip(": "),
            image=image.name,
        )
    return artifact_for(load_recipe(image.name), settings.images_dir)


def image_for_create(session: Session, name: str) -> Image:
    """The image row a new instance may use: building is fine (the create waits for it)."""
    recipe = _recipe(name)
    row = _row(session, name)
    if row is None or row.content_hash != recipe.content_hash():
        raise ImageNotReady(
            f"image {name!r} has not been built: run `onep image build {name}`", image=name
        )
    if row.status == ERROR:
        raise ImageNotReady(f"image {name!r} failed to build: {row.status_message}", image=name)
    return row


# -- the build operation -------------------------------------------------------------------
def _step_rootfs(ctx: StepContext) -> None:
    recipe = load_recipe(ctx.params["name"])
    build_rootfs(recipe, ctx.settings.images_dir, progress=ctx.progress)


def _step_export_oci(ctx: StepContext) -> None:
    from oneplatform.compute.catalog import host_ref

    recipe = load_recipe(ctx.params["name"])
    artifact = artifact_for(recipe, ctx.settings.images_dir)
    with ctx.store.session() as session:
        refs = [
            host_ref(host, pool)
            for host, pool in session.execute(
                select(Host, Pool)
                .join(Pool, Pool.id == Host.pool_id)
                .where(Pool.compute_type == ComputeType.CONTAINER.value, Host.enabled.is_(True))
            ).all()
        ]
    for ref in refs:
        ctx.progress(f"importing into {ref.name}")
        driver_for(ref).ensure_image(artifact)


def _step_finish(ctx: StepContext) -> None:
    recipe = load_recipe(ctx.params["name"])
    artifact = artifact_for(recipe, ctx.settings.images_dir)
    rootfs: Path | None = artifact.rootfs
    with ctx.transaction() as session:
        row = session.get_one(Image, ctx.resource_id)
        row.status, row.status_message = READY, ""
        row.formats = {"oci": {"ref": artifact.ref}, "rootfs": {"path": str(rootfs)}}
        row.size_bytes = rootfs.stat().st_size if rootfs and rootfs.exists() else 0


def _on_build_failure(session: Session, ctx: StepContext, err: PlatformError) -> None:
    row = session.get_one(Image, ctx.resource_id)
    row.status, row.status_message = ERROR, err.message[-2000:]


IMAGE_BUILD = register(
    OperationKind(
        name="image.build",
        resource_type="image",
        steps=(
            ("rootfs", _step_rootfs),
            ("export_oci", _step_export_oci),
            ("finish", _step_finish),
        ),
        on_failure=_on_build_failure,
        description="Build a datastore image and export it to the hosts' formats.",
    )
)
