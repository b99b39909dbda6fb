"""Projects and tokens."""

from __future__ import annotations

import datetime as dt
from typing import Literal

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


Role = Literal["admin", "member", "reader"]
DAY = 86400


class TokenCreate(Request):
    name: ResourceName
    role: Role = Field(
        default="member",
        description="member: everything in the project; reader: read only; admin: the "
        "admin project's tokens only. Never more than the caller's own role.",
    )
    expires_in_s: int = Field(
        default=90 * DAY, ge=60, le=3650 * DAY, description="Lifetime in seconds (90 days)."
    )


class TokenOut(Response):
    name: str
    role: str
    created_at: dt.datetime
    expires_at: dt.datetime | None = None
    last_used_at: dt.datetime | None = None


class TokenCreated(TokenOut):
    token: str = Field(description="Shown once.")
