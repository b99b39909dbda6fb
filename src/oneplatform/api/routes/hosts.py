from __future__ import annotations

from fastapi import APIRouter, status

from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.errors import declared
from oneplatform.compute import catalog
from oneplatform.schemas.compute import HostCreate, HostOut

router = APIRouter(tags=["hosts"], responses=declared(401, 403, 404, 409, 413, 422, 502, 503))


@router.get("/hosts", response_model=list[HostOut])
def list_hosts(platform: PlatformDep, caller: CallerDep) -> list[HostOut]:
    """Hosts with their capacity and what is in use (admin only)."""
    return catalog.list_hosts(platform.store, caller)


@router.post("/hosts", response_model=HostOut, status_code=status.HTTP_201_CREATED)
def register_host(body: HostCreate, platform: PlatformDep, caller: CallerDep) -> HostOut:
    return catalog.register_host(platform.store, caller, body)
