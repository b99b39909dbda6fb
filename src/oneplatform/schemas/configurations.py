"""Configuration groups: engine parameters of one datastore version, attached to databases."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import Field, StringConstraints

from oneplatform.schemas.base import Request, ResourceName, Response

ParameterName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_.\-]{0,99}$"),
    Field(description="An engine parameter's name, as the engine spells it."),
]
ParameterValue = Annotated[
    str,
    StringConstraints(max_length=1024),
    Field(description="The value as the engine's configuration file takes it: 200, 8MB, 30s."),
]
Values = dict[ParameterName, ParameterValue]


class ConfigurationCreate(Request):
    name: ResourceName
    description: str = Field(default="", max_length=1024)
    datastore: str = Field(default="postgresql", description="The engine.")
    version: str | None = Field(default=None, description="Its version; by default the newest.")
    values: Values = Field(
        default={},
        max_length=256,
        description="Parameters and their values, validated "
        "against the version's catalog and normalised as the engine reads them.",
    )


class ConfigurationUpdate(Request):
    """What a PATCH changes: ``values`` are merged in, ``unset`` names are taken out; every
    database attached to the group gets the new values."""

    description: str | None = Field(default=None, max_length=1024)
    values: Values = Field(default={}, max_length=256)
    unset: list[ParameterName] = Field(default=[], max_length=256)


class ConfigurationInstance(Response):
    id: str
    name: str
    restart_required: bool


class ConfigurationOut(Response):
    id: str
    name: str
    description: str
    datastore: str
    version: str
    values: dict[str, str]
    instances: list[ConfigurationInstance] = Field(
        default=[], description="The database instances attached to it."
    )
    created_at: dt.datetime
    updated_at: dt.datetime


class ConfigurationAttach(Request):
    configuration: str = Field(description="The configuration group's name or id.")


class ParameterOut(Response):
    name: str
    type: str = Field(description="bool, integer, real, enum or string.")
    restart_required: bool = Field(description="Takes effect only when the engine restarts.")
    unit: str = ""
    min: float | None = None
    max: float | None = None
    values: list[str] = Field(default=[], description="An enum's allowed values.")
    default: str = ""
