from __future__ import annotations

from fastapi import APIRouter, status

from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.errors import declared
from oneplatform.compute import catalog
from oneplatform.schemas.compute import PoolCreate, PoolOut

router = APIRouter(tags=["pools"], responses=declared(401, 403, 409, 413, 422))


@router.get("/pools", response_model=list[PoolOut])
def list_pools(platform: PlatformDep, caller: CallerDep) -> list[PoolOut]:
    """The pools of hosts and their settings (admin: a project sees compute types and
    flavors, not the machines behind them)."""
    return catalog.list_pools(platform.store, caller)


@router.post("/pools", response_model=PoolOut, status_code=status.HTTP_201_CREATED)
def create_pool(body: PoolCreate, platform: PlatformDep, caller: CallerDep) -> PoolOut:
    return catalog.create_pool(platform.store, caller, body)
