"""Bare-metal nodes."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import Field

from oneplatform.schemas.base import Request, ResourceName, Response
from oneplatform.schemas.operations import OperationOut


class PortTarget(Response):
    host: str
    port: int


class NodeEnroll(Request):
    name: ResourceName
    pool: str = "baremetal"
    bmc_protocol: str = Field(
        default="redfish", max_length=16, description="How the BMC is reached."
    )
    bmc_address: str = Field(min_length=1, max_length=255, description="e.g. http://host:8000")
    bmc_system_id: str = Field(min_length=1, max_length=255)
    bmc_username: str = Field(default="", max_length=63)
    bmc_password: str = Field(default="", max_length=255)
    port_map: dict[str, PortTarget] = Field(
        default={},
        description="How the node's guest ports are reached: {guest_port: {host, port}}.",
    )
    provide: bool = Field(default=True, description="Clean and make available after inspection.")


class NodeOut(Response):
    id: str
    name: str
    state: str
    target_state: str | None = None
    power_state: str
    pool: str
    instance: str | None = None
    last_error: str = ""
    bmc_address: str
    bmc_system_id: str
    inventory: dict[str, Any] = {}
    created_at: dt.datetime
    updated_at: dt.datetime


class NodeAccepted(Response):
    operation: OperationOut
    node: NodeOut


class NodePower(Request):
    action: Literal["on", "off", "reboot"]
