"""Platform users: a name in one project, a role, a password (kept only as a hash)."""

from __future__ import annotations

import datetime as dt

from pydantic import Field

from oneplatform.schemas.base import Request, ResourceName, Response
from oneplatform.schemas.projects import Role

PASSWORD_MIN = 8
PASSWORD_MAX = 1024


class UserCreate(Request):
    name: ResourceName
    role: Role = Field(
        default="member",
        description="member: everything in the project; reader: read only; admin: users of "
        "the admin project only.",
    )
    password: str | None = Field(
        default=None,
        min_length=PASSWORD_MIN,
        max_length=PASSWORD_MAX,
        description="The user's password; left out: a strong one is generated and returned once.",
    )


class UserOut(Response):
    id: str
    name: str
    project: str
    role: str
    created_at: dt.datetime


class UserCreated(UserOut):
    password: str | None = Field(
        default=None,
        description="Shown once: the generated password (null when the request gave one).",
    )
