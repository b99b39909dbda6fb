"""Projects and tokens."""

from __future__ import annotations

from pydantic import Field

from oneplatform.schemas.base import Request, ResourceName, Response


class ProjectCreate(Request):
    name: ResourceName


class ProjectOut(Response):
    id: str
    name: str


class ProjectCreated(Response):
    project: ProjectOut
    token: str = Field(description="Shown once: the project's first member token.")


class WhoAmI(Response):
    project: ProjectOut
    role: str
    token_name: str
