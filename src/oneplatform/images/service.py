"""The image catalog: recipes, what has been built from them, and the build operation."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneplatform.compute.drivers import driver_for
from oneplatform.compute.drivers.base import HostRef, ImageArtifact
from oneplatform.config import Settings
from oneplatform.errors import ImageNotReady, NotFound, PlatformError
from oneplatform.iam import Caller
from oneplatform.images.builder import Progress, artifact_for, build_rootfs, build_vm_image
from oneplatform.images.recipes import Recipe, list_recipes, load_recipe
from oneplatform.ops.engine import StepContext, enqueue
from oneplatform.ops.model import OperationKind, OperationStatus, register
from oneplatform.ops.service import to_out
from oneplatform.schemas.compute import ComputeType
from oneplatform.schemas.images import ImageBuildAccepted, ImageOut
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


def artifact_for_host(
    settings: Settings, artifact: ImageArtifact, compute_type: ComputeType, progress: Progress
) -> ImageArtifact:
    """The artifact with the format ``compute_type`` needs, exporting it now if it is missing
    (a VM host registered after the image was built)."""
    if compute_type is ComputeType.VM and artifact.vm is None:
        recipe = load_recipe(artifact.name)
        build_vm_image(recipe, settings.images_dir, progress)
        return artifact_for(recipe, settings.images_dir)
    return artifact


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


def _hosts_of(ctx: StepContext, compute_type: ComputeType) -> list[HostRef]:
    from oneplatform.compute.catalog import host_ref

    with ctx.store.session() as session:
        return [
            host_ref(host, pool)
            for host, pool in session.execute(
                select(Host, Pool)
                .join(Pool, Pool.id == Host.pool_id)
                .where(Pool.compute_type == compute_type.value, Host.enabled.is_(True))
            ).all()
        ]


def _load_into_hosts(ctx: StepContext, compute_type: ComputeType) -> None:
    artifact = artifact_for(load_recipe(ctx.params["name"]), ctx.settings.images_dir)
    for ref in _hosts_of(ctx, compute_type):
        ctx.progress(f"loading into {ref.name}")
        driver_for(ref).ensure_image(artifact)


def _step_export_oci(ctx: StepContext) -> None:
    """Import the root filesystem into every container host as an OCI image."""
    _load_into_hosts(ctx, ComputeType.CONTAINER)


def _step_export_vm(ctx: StepContext) -> None:
    """Make the qcow2 disk, kernel and initrd (cached), and upload them to every VM host."""
    if not _hosts_of(ctx, ComputeType.VM):
        return  # built on demand when a VM host is registered
    build_vm_image(load_recipe(ctx.params["name"]), ctx.settings.images_dir, ctx.progress)
    _load_into_hosts(ctx, ComputeType.VM)


def _step_finish(ctx: StepContext) -> None:
    recipe = load_recipe(ctx.params["name"])
    artifact = artifact_for(recipe, ctx.settings.images_dir)
    rootfs: Path | None = artifact.rootfs
    with ctx.transaction() as session:
        row = session.get_one(Image, ctx.resource_id)
        row.status, row.status_message = READY, ""
        row.formats = {"oci": {"ref": artifact.ref}, "rootfs": {"path": str(rootfs)}}
        if artifact.vm is not None:
            row.formats["qcow2"] = {"disk": str(artifact.vm.disk)}
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
            ("export_vm", _step_export_vm),
            ("finish", _step_finish),
        ),
        on_failure=_on_build_failure,
        description="Build a datastore image and export it to the hosts' formats.",
    )
)
