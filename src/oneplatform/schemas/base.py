"""What every schema shares: strict requests, lenient responses, names, the error body."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

ResourceName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"),
    Field(description="Lower-case letters, digits and '-', starting with a letter, 1-63 long."),
]
CatalogName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9.\-]{0,62}$"),
    Field(description="Lower-case letters, digits, '.' and '-', starting with a letter."),
]
FailureDomain = Annotated[
    str,
    StringConstraints(pattern=r"^([a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?)?$"),
    Field(description="A failure domain's name (empty: none given)."),
]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Response(BaseModel):
    model_config = ConfigDict(extra="ignore", from_attributes=True)


class ErrorBody(Response):
    code: str
    message: str
    details: dict[str, Any] = {}


class ErrorResponse(Response):
    """Every error answer: ``{"error": {"code", "message", "details"}}``; ``code`` is stable."""

    error: ErrorBody
