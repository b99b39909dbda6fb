from __future__ import annotations

from fastapi import APIRouter, status

from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.errors import declared
from oneplatform.compute import catalog
from oneplatform.schemas.compute import FlavorCreate, FlavorOut

router = APIRouter(tags=["flavors"], responses=declared(401, 403, 409, 413, 422))


@router.get("/flavors", response_model=list[FlavorOut])
def list_flavors(platform: PlatformDep, caller: CallerDep) -> list[FlavorOut]:
    """Every project's flavors, and the caller's project's own (its clusters')."""
    return catalog.list_flavors(platform.store, caller)


@router.post("/flavors", response_model=FlavorOut, status_code=status.HTTP_201_CREATED)
def create_flavor(body: FlavorCreate, platform: PlatformDep, caller: CallerDep) -> FlavorOut:
    return catalog.create_flavor(platform.store, caller, body)
