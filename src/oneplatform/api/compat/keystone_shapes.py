"""What Keystone v3's clients send and read (only what they use), as Pydantic models.

Requests are lenient (``extra="ignore"``): clients add fields of their own, and a field we
do not use must not refuse a sign-in. Keystone's timestamps are ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

DEFAULT_DOMAIN_ID = "default"
DEFAULT_DOMAIN_NAME = "Default"


# An id or a name as a client sends it: bounded, and without NUL (PostgreSQL refuses it).
Ref = Annotated[str, StringConstraints(max_length=255, pattern=r"^[^\x00]*$")]


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class DomainRef(_In):
    id: Ref | None = None
    name: Ref | None = None

    @property
    def is_default(self) -> bool:
        """The one domain: by id ``default`` or by name ``Default`` (both, if both given)."""
        given = self.id is not None or self.name is not None
        return (
            given
            and self.id in (None, DEFAULT_DOMAIN_ID)
            and self.name in (None, DEFAULT_DOMAIN_NAME)
        )


class PasswordUser(_In):
    id: Ref | None = None
    name: Ref | None = None
    domain: DomainRef | None = None
    password: str = Field(repr=False, max_length=4096)


class PasswordMethod(_In):
    user: PasswordUser


class TokenMethod(_In):
    id: str = Field(repr=False, max_length=4096, pattern=r"^[^\x00]*$")


class Identity(_In):
    methods: list[str] = Field(min_length=1)
    password: PasswordMethod | None = None
    token: TokenMethod | None = None


class ProjectRef(_In):
    id: Ref | None = None
    name: Ref | None = None
    domain: DomainRef | None = None


class Scope(_In):
    project: ProjectRef | None = None
    domain: DomainRef | None = None
    system: dict[str, object] | None = None


class Auth(_In):
    identity: Identity
    scope: Scope | Literal["unscoped"] | None = None


class AuthRequest(_In):
    auth: Auth


# -- answers ---------------------------------------------------------------------------------
class Link(BaseModel):
    rel: str
    href: str


class MediaType(BaseModel):
    base: str
    type: str


class Version(BaseModel):
    id: str
    status: str
    updated: str
    links: list[Link]
    media_types: list[MediaType] = Field(alias="media-types", serialization_alias="media-types")

    model_config = ConfigDict(populate_by_name=True)


class Versions(BaseModel):
    values: list[Version]


class VersionsOut(BaseModel):
    versions: Versions


class VersionOut(BaseModel):
    version: Version


class Domain(BaseModel):
    id: str
    name: str


class UserRef(BaseModel):
    id: str
    name: str
    domain: Domain
    password_expires_at: str | None = None


class ProjectOut(BaseModel):
    id: str
    name: str
    domain: Domain


class Role(BaseModel):
    id: str
    name: str


class Endpoint(BaseModel):
    id: str
    interface: Literal["public", "internal", "admin"]
    region: str
    region_id: str
    url: str


class Service(BaseModel):
    id: str
    type: str
    name: str
    endpoints: list[Endpoint]


class Token(BaseModel):
    methods: list[str]
    user: UserRef
    project: ProjectOut
    roles: list[Role]
    catalog: list[Service]
    audit_ids: list[str]
    expires_at: str
    issued_at: str
    is_domain: bool = False


class TokenOut(BaseModel):
    token: Token


class ErrorBody(BaseModel):
    code: int
    title: str
    message: str


class ErrorOut(BaseModel):
    """Keystone's error body: ``{"error": {"code": 401, "title": "Unauthorized", ...}}``."""

    error: ErrorBody


def timestamp(moment: dt.datetime) -> str:
    """Keystone's form: UTC, microseconds, a ``Z``."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
