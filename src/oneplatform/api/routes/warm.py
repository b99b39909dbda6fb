from __future__ import annotations

from fastapi import APIRouter

from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.errors import declared
from oneplatform.dbaas import warm as service
from oneplatform.schemas.warm import WarmPoolOut, WarmSet

router = APIRouter(prefix="/warm", tags=["warm"], responses=declared(401, 403, 404, 413, 422))


@router.get("", response_model=list[WarmPoolOut])
def list_warm(platform: PlatformDep, caller: CallerDep) -> list[WarmPoolOut]:
    """Warm capacity per flavor and datastore version (admin only)."""
    return service.list_warm(platform.store, caller)


@router.put("", response_model=WarmPoolOut)
def set_warm(body: WarmSet, platform: PlatformDep, caller: CallerDep) -> WarmPoolOut:
    """Keep ``count`` database instances of a flavor and version ready (0 drains them);
    creates that match claim one instead of building (admin only)."""
    return service.set_warm(platform.store, caller, body)
