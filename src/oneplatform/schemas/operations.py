"""Operations: long-running requests, their steps and progress."""

from __future__ import annotations

import datetime as dt
import enum

from oneplatform.schemas.base import Response


class Intent(enum.StrEnum):
    """What an operation does to its resource, whatever its kind."""

    CREATE = "create"
    DELETE = "delete"
    ACTION = "action"  # anything else: start, stop, restart, snapshot, manage, ...


class StepOut(Response):
    name: str
    status: str
    message: str = ""
    started_at: str | None = None
    finished_at: str | None = None


class OperationOut(Response):
    id: str
    kind: str
    intent: Intent
    resource_type: str
    resource_id: str
    status: str
    steps: list[StepOut] = []
    progress: float = 0.0
    error_code: str | None = None
    error_message: str | None = None
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None = None
