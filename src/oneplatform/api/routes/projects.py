from __future__ import annotations

from fastapi import APIRouter, status

from oneplatform import iam
from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.errors import declared
from oneplatform.schemas.projects import ProjectCreate, ProjectCreated, ProjectOut, WhoAmI

router = APIRouter(tags=["projects"], responses=declared(401, 403, 409, 413, 422))


@router.get("/projects", response_model=list[ProjectOut])
def list_projects(platform: PlatformDep, caller: CallerDep) -> list[ProjectOut]:
    return iam.list_projects(platform.store, caller)


@router.post("/projects", response_model=ProjectCreated, status_code=status.HTTP_201_CREATED)
def create_project(body: ProjectCreate, platform: PlatformDep, caller: CallerDep) -> ProjectCreated:
    """Create a project and its first member token (admin only). The token is shown once."""
    return iam.create_project(platform.store, caller, body.name)


@router.get("/whoami", response_model=WhoAmI)
def whoami(caller: CallerDep) -> WhoAmI:
    return iam.whoami(caller)
