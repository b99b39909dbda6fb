"""Backups: a database instance's copies in its repository, its schedule and its window."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field

from oneplatform.schemas.base import Request, ResourceName, Response
from oneplatform.schemas.operations import OperationOut

BackupType = Literal["full", "diff", "incr"]


class BackupCreate(Request):
    type: BackupType = Field(
        default="full",
        description="full; diff: what changed since the last full; incr: since the last backup.",
    )
    name: ResourceName | None = Field(default=None, description="Generated when omitted.")


class BackupOut(Response):
    id: str
    name: str
    database: str = Field(description="The database instance's name.")
    database_id: str
    type: str
    status: str
    status_message: str = ""
    scheduled: bool = False
    parent: str | None = Field(
        default=None, description="The backup a diff or incr builds on (its name)."
    )
    size_bytes: int | None = Field(default=None, description="The database's size backed up.")
    repo_size_bytes: int | None = Field(
        default=None, description="What it takes in the repository (compressed, this backup's own)."
    )
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    wal_start: str | None = None
    wal_stop: str | None = None
    created_at: dt.datetime


class BackupAccepted(Response):
    operation: OperationOut
    backup: BackupOut


class ScheduleSet(Request):
    every_seconds: int = Field(ge=10, le=31 * 86400, description="How often to back up.")
    full_every_seconds: int | None = Field(
        default=None,
        ge=10,
        le=366 * 86400,
        description="How often a full backup (the others incremental); every one when omitted.",
    )
    keep_days: float = Field(gt=0, le=3650, description="The recovery window kept, in days.")


class ScheduleOut(Response):
    database: str
    every_seconds: int
    full_every_seconds: int | None
    keep_days: float
    next_run_at: dt.datetime
    message: str = ""
