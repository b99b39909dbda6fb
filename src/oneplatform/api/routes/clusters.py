from __future__ import annotations

from fastapi import APIRouter, status

from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.errors import declared
from oneplatform.clusters import service
from oneplatform.schemas.clusters import (
    ClusterAccepted,
    ClusterConnection,
    ClusterCreate,
    ClusterOut,
    ClusterResize,
)

router = APIRouter(tags=["clusters"], responses=declared(401, 403, 404, 409, 413, 422, 502, 503))
ACCEPTED = status.HTTP_202_ACCEPTED


@router.get("/clusters", response_model=list[ClusterOut])
def list_clusters(platform: PlatformDep, caller: CallerDep) -> list[ClusterOut]:
    """The project's clusters."""
    return service.list_clusters(platform.store, caller)


@router.post("/clusters", response_model=ClusterAccepted, status_code=ACCEPTED)
def create_cluster(
    body: ClusterCreate, platform: PlatformDep, caller: CallerDep
) -> ClusterAccepted:
    """A container pool of the project's own, composed from VMs running Podman, with a
    flavor `<name>.small` that places containers (databases) there."""
    return service.create_cluster(platform.store, platform.settings, caller, body)


@router.get("/clusters/{ident}", response_model=ClusterOut)
def show_cluster(ident: str, platform: PlatformDep, caller: CallerDep) -> ClusterOut:
    return service.get_cluster(platform.store, caller, ident)


@router.get("/clusters/{ident}/connect", response_model=list[ClusterConnection])
def connect_cluster(
    ident: str, platform: PlatformDep, caller: CallerDep
) -> list[ClusterConnection]:
    """Each node's Podman: `podman --url URL --identity IDENTITY_FILE …`."""
    return service.connect(platform.store, platform.settings, caller, ident)


@router.post("/clusters/{ident}/resize", response_model=ClusterAccepted, status_code=ACCEPTED)
def resize_cluster(
    ident: str, body: ClusterResize, platform: PlatformDep, caller: CallerDep
) -> ClusterAccepted:
    """Add nodes, or drain the newest (refused while instances live on them)."""
    return service.resize_cluster(platform.store, platform.settings, caller, ident, body)


@router.delete("/clusters/{ident}", response_model=ClusterAccepted, status_code=ACCEPTED)
def delete_cluster(ident: str, platform: PlatformDep, caller: CallerDep) -> ClusterAccepted:
    """Refused (`409 cluster_in_use`) while databases live on its nodes."""
    return service.delete_cluster(platform.store, platform.settings, caller, ident)
