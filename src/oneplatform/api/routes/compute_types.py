from __future__ import annotations

from fastapi import APIRouter

from oneplatform.api.deps import CallerDep
from oneplatform.api.errors import declared
from oneplatform.compute import catalog
from oneplatform.schemas.compute import ComputeTypeOut

router = APIRouter(tags=["compute-types"], responses=declared(401))


@router.get("/compute-types", response_model=list[ComputeTypeOut])
def list_compute_types(_caller: CallerDep) -> list[ComputeTypeOut]:
    """Compute types with every capability, and the reason for each one not supported."""
    return catalog.list_compute_types()
