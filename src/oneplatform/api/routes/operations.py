from __future__ import annotations

from fastapi import APIRouter, Query

from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.errors import declared
from oneplatform.ops import service
from oneplatform.schemas.operations import OperationOut

router = APIRouter(tags=["operations"], responses=declared(401, 404, 422))


@router.get("/operations", response_model=list[OperationOut])
def list_operations(
    platform: PlatformDep,
    caller: CallerDep,
    resource_id: str | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[OperationOut]:
    return service.list_operations(platform.store, caller, resource_id, limit)


@router.get("/operations/{operation_id}", response_model=OperationOut)
def show_operation(operation_id: str, platform: PlatformDep, caller: CallerDep) -> OperationOut:
    return service.get_operation(platform.store, caller, operation_id)
