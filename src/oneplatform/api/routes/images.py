from __future__ import annotations

from fastapi import APIRouter, Response, status

from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.errors import declared
from oneplatform.compute.images import request_build
from oneplatform.images import catalog
from oneplatform.schemas.images import ImageBuildAccepted, ImageOut

router = APIRouter(tags=["images"], responses=declared(401, 403, 404, 409, 413, 422))


@router.get("/images", response_model=list[ImageOut])
def list_images(platform: PlatformDep, _caller: CallerDep) -> list[ImageOut]:
    return catalog.list_images(platform.store)


@router.get("/images/{name}", response_model=ImageOut)
def show_image(name: str, platform: PlatformDep, _caller: CallerDep) -> ImageOut:
    return catalog.get_image(platform.store, name)


@router.post(
    "/images/{name}/build",
    response_model=ImageBuildAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses={200: {"description": "Already built: nothing to do."}},
)
def build_image(
    name: str, platform: PlatformDep, caller: CallerDep, response: Response
) -> ImageBuildAccepted:
    """Build an image from its recipe (admin only); instant when the cache has it."""
    accepted = request_build(platform.store, caller, name)
    if accepted.operation is None:
        response.status_code = status.HTTP_200_OK
    return accepted
