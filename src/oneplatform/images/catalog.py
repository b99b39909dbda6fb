"""The image catalog: recipes, what has been built from them, and their state machine.

Building is an operation of the compute layer (:mod:`oneplatform.compute.images`), which
also loads a built image into the hosts that run it.
"""

from __future__ import annotations

import enum

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneplatform.config import Settings
from oneplatform.errors import ImageNotReady, NotFound
from oneplatform.images.artifacts import ImageArtifact
from oneplatform.images.builder import artifact_for
from oneplatform.images.recipes import Recipe, list_recipes, load_recipe
from oneplatform.schemas.images import ImageOut
from oneplatform.statemachine import StateMachine
from oneplatform.store.db import Store
from oneplatform.store.models import Image

NOT_BUILT = "NOT_BUILT"  # what the API says of a recipe with no current build


class ImageStatus(enum.StrEnum):
    BUILDING = "BUILDING"
    READY = "READY"
    ERROR = "ERROR"


IMAGES: StateMachine[ImageStatus] = StateMachine(
    resource_type="image",
    states=ImageStatus,
    initial=ImageStatus.BUILDING,
    transitions={
        ImageStatus.BUILDING: frozenset({ImageStatus.READY, ImageStatus.ERROR}),
        ImageStatus.READY: frozenset({ImageStatus.BUILDING}),  # the recipe changed: build again
        ImageStatus.ERROR: frozenset({ImageStatus.BUILDING}),
    },
    stable=frozenset({ImageStatus.READY, ImageStatus.ERROR}),
    failed=ImageStatus.ERROR,
    description="A datastore image built from its recipe (`NOT_BUILT` in the API: no row yet "
    "for the recipe's current content hash).",
)


def to_out(recipe: Recipe, row: Image | None) -> ImageOut:
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
        return [to_out(load_recipe(name), rows.get(name)) for name in list_recipes()]


def get_image(store: Store, name: str) -> ImageOut:
    recipe = recipe_named(name)
    with store.session() as session:
        return to_out(recipe, image_row(session, name))


def recipe_named(name: str) -> Recipe:
    try:
        return load_recipe(name)
    except NotFound:
        raise NotFound(f"image {name!r} not found", code="image_not_found") from None


def image_row(session: Session, name: str) -> Image | None:
    return session.scalars(select(Image).where(Image.name == name)).first()


def ready_artifact(session: Session, settings: Settings, image: Image) -> ImageArtifact:
    """The artifact to load on a host; ImageNotReady while the image is not READY."""
    if IMAGES.state_of(image) is not ImageStatus.READY:
        raise ImageNotReady(
            f"image {image.name!r} is {image.status}: {image.status_message}".rstrip(": "),
            image=image.name,
        )
    return artifact_for(load_recipe(image.name), settings.images_dir)
