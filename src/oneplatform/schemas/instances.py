"""Compute instances."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field

from oneplatform.schemas.base import CatalogName, Request, ResourceName, Response
from oneplatform.schemas.operations import OperationOut


class InstanceCreate(Request):
    name: ResourceName
    flavor: CatalogName
    image: CatalogName


class Endpoint(Response):
    name: str
    host: str
    port: int


class InstanceOut(Response):
    id: str
    name: str
    project_id: str
    status: str
    status_message: str = ""
    power_state: str = "unknown"
    compute_type: str
    flavor: str
    image: str
    host: str | None = None
    endpoints: list[Endpoint] = []
    created_at: dt.datetime
    updated_at: dt.datetime


class InstanceAccepted(Response):
    operation: OperationOut
    instance: InstanceOut


class InstanceAction(Request):
    action: Literal["start", "stop", "reboot"]
    force: bool = Field(
        default=False, description="reboot only: reset without asking the guest (forced_reboot)"
    )


class InstanceResize(Request):
    flavor: CatalogName = Field(description="A flavor of the instance's own compute type.")


class ExecRequest(Request):
    command: list[str] = Field(min_length=1, max_length=256)
    timeout: float = Field(default=60.0, gt=0, le=600)


class ExecOut(Response):
    exit_code: int
    output: str


class ConsoleOut(Response):
    output: str


class SnapshotRequest(Request):
    name: ResourceName
