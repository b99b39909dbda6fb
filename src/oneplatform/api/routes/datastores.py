from __future__ import annotations

from fastapi import APIRouter

from oneplatform.api.deps import CallerDep
from oneplatform.api.errors import declared
from oneplatform.dbaas import service
from oneplatform.schemas.databases import DatastoreOut

router = APIRouter(tags=["datastores"], responses=declared(401))


@router.get("/datastores", response_model=list[DatastoreOut])
def list_datastores(_caller: CallerDep) -> list[DatastoreOut]:
    """Database engines and versions a database instance can be created with."""
    return service.list_datastores()
