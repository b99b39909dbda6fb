"""Warm capacity: ready database instances an operator keeps per flavor and version."""

from __future__ import annotations

import datetime as dt

from pydantic import Field

from oneplatform.schemas.base import CatalogName, Request, Response


class WarmSet(Request):
    flavor: CatalogName
    datastore: str = "postgresql"
    version: str | None = Field(default=None, description="The datastore's default if omitted.")
    count: int = Field(ge=0, le=64, description="How many to keep ready; 0 drains.")
    size_gb: int = Field(
        default=1, ge=1, le=1024, description="Their data volume: creates of this size claim them."
    )


class WarmPoolOut(Response):
    flavor: str
    compute_type: str
    datastore: str
    version: str
    size_gb: int
    target: int
    ready: int = Field(description="Booted, engine initialized, waiting for an owner.")
    building: int
    claimed: int = Field(description="Handed to an owner so far.")
    message: str = Field(default="", description="Why the last attempt to add one failed.")
    updated_at: dt.datetime
