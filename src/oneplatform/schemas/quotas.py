"""Quotas per project: limits an admin sets, with what the project uses."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from oneplatform.schemas.base import Request, Response
from oneplatform.schemas.projects import ProjectOut

QuotaResource = Literal["databases", "vcpus", "ram_mb", "storage_gb", "backups"]
RESOURCES: tuple[QuotaResource, ...] = ("databases", "vcpus", "ram_mb", "storage_gb", "backups")

_UNLIMITED = " null: unlimited; left out: unchanged."


class QuotaSet(Request):
    """New limits; a field left out keeps its limit, null lifts it."""

    databases: int | None = Field(
        default=None, ge=0, description="Database instances (a replica is not one)." + _UNLIMITED
    )
    vcpus: int | None = Field(
        default=None, ge=0, description="vCPUs of all instances, replicas too." + _UNLIMITED
    )
    ram_mb: int | None = Field(
        default=None, ge=0, description="RAM (MiB) of all instances, replicas too." + _UNLIMITED
    )
    storage_gb: int | None = Field(
        default=None,
        ge=0,
        description="Disk (GB) of all instances: each flavor's disk plus the data volumes "
        "(a database's --size-gb, once per member)." + _UNLIMITED,
    )
    backups: int | None = Field(
        default=None, ge=0, description="Backups kept (failed ones do not count)." + _UNLIMITED
    )


class QuotaUsage(Response):
    limit: int | None = Field(description="null: unlimited.")
    used: int


class QuotaOut(Response):
    project: ProjectOut
    quota: dict[QuotaResource, QuotaUsage]
