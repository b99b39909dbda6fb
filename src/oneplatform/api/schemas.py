"""The API's schemas, shared by the server and the SDK.

Strict on write (``extra="forbid"``), lenient on read (unknown fields are ignored), so an
older client keeps working against a newer server.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from oneplatform.compute.states import ComputeType

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


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Response(BaseModel):
    model_config = ConfigDict(extra="ignore", from_attributes=True)


# -- errors ------------------------------------------------------------------------------
class ErrorBody(Response):
    code: str
    message: str
    details: dict[str, Any] = {}


class ErrorResponse(Response):
    error: ErrorBody


# -- operations --------------------------------------------------------------------------
class StepOut(Response):
    name: str
    status: str
    message: str = ""
    started_at: str | None = None
    finished_at: str | None = None


class OperationOut(Response):
    id: str
    kind: str
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


# -- compute types -----------------------------------------------------------------------
class CapabilityOut(Response):
    name: str
    supported: bool
    description: str
    reason: str | None = None


class ComputeTypeOut(Response):
    name: ComputeType
    driver: str
    capabilities: list[CapabilityOut]


# -- pools, hosts, flavors -----------------------------------------------------------------
class PoolCreate(Request):
    name: ResourceName
    compute_type: ComputeType
    settings: dict[str, Any] = {}


class PoolOut(Response):
    id: str
    name: str
    compute_type: str
    settings: dict[str, Any] = {}


class HostCreate(Request):
    name: ResourceName
    pool: str
    uri: str = Field(min_length=1, max_length=255)
    bind_address: str = "127.0.0.1"
    traits: list[str] = []
    port_range_start: int = Field(default=20000, ge=1024, le=65535)
    port_range_end: int = Field(default=29999, ge=1024, le=65535)


class HostOut(Response):
    id: str
    name: str
    pool: str
    compute_type: str
    uri: str
    bind_address: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    used_vcpus: int = 0
    used_ram_mb: int = 0
    used_disk_gb: int = 0
    traits: list[str] = []
    enabled: bool


class FlavorCreate(Request):
    name: CatalogName
    compute_type: ComputeType
    vcpus: int = Field(ge=1, le=256)
    ram_mb: int = Field(ge=64, le=4 * 1024 * 1024)
    disk_gb: int = Field(ge=1, le=65536)
    traits: list[str] = []


class FlavorOut(Response):
    id: str
    name: str
    compute_type: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    traits: list[str] = []


# -- images -------------------------------------------------------------------------------
class ImageOut(Response):
    name: str
    description: str = ""
    status: str
    status_message: str = ""
    content_hash: str | None = None
    formats: dict[str, Any] = {}
    ports: dict[str, int] = {}
    size_bytes: int = 0


class ImageBuildAccepted(Response):
    operation: OperationOut | None
    image: ImageOut


# -- instances ----------------------------------------------------------------------------
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


# -- projects and tokens ------------------------------------------------------------------
class ProjectCreate(Request):
    name: ResourceName


class ProjectOut(Response):
    id: str
    name: str


class ProjectCreated(Response):
    project: ProjectOut
    token: str = Field(description="Shown once: the project's first member token.")


class WhoAmI(Response):
    project: ProjectOut
    role: str
    token_name: str


# -- databases as a service ---------------------------------------------------------------
DbObjectName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,62}$"),
    Field(description="Lower-case letters, digits and '_', starting with a letter or '_'."),
]
Password = Annotated[
    str,
    StringConstraints(min_length=8, max_length=128, pattern=r"^[\x21-\x7e]+$"),
    Field(description="8-128 printable ASCII characters without spaces."),
]


class DatastoreVersionOut(Response):
    version: str
    image: str
    default: bool


class DatastoreOut(Response):
    name: str
    versions: list[DatastoreVersionOut]


class DbUserSpec(Request):
    name: DbObjectName
    password: Password
    databases: list[DbObjectName] = []


class DbInstanceCreate(Request):
    name: ResourceName
    datastore: str = "postgresql"
    version: str | None = None
    flavor: CatalogName
    size_gb: int = Field(default=1, ge=1, le=1024, description="Data volume size.")
    databases: list[DbObjectName] = Field(default=[], max_length=64)
    users: list[DbUserSpec] = Field(default=[], max_length=64)


class DbEndpoint(Response):
    host: str
    port: int


class DbInstanceOut(Response):
    id: str
    name: str
    project_id: str
    status: str
    status_message: str = ""
    health: str
    health_message: str = ""
    datastore: str
    version: str
    flavor: str
    compute_type: str
    size_gb: int
    endpoint: DbEndpoint | None = None
    created_at: dt.datetime
    updated_at: dt.datetime


class DbInstanceAccepted(Response):
    operation: OperationOut
    instance: DbInstanceOut


class Credentials(Response):
    username: str
    password: str


class DatabaseCreate(Request):
    name: DbObjectName


class DatabaseOut(Response):
    name: str


class DbUserCreate(Request):
    name: DbObjectName
    password: Password | None = Field(default=None, description="Generated when omitted.")
    databases: list[DbObjectName] = []


class DbUserOut(Response):
    name: str
    databases: list[str] = []


class DbUserCreated(Response):
    user: DbUserOut
    password: str = Field(description="Shown once.")


class PasswordChange(Request):
    password: Password | None = Field(default=None, description="Generated when omitted.")


class GrantRequest(Request):
    database: DbObjectName


# -- bare-metal nodes ------------------------------------------------------------------------
class PortTarget(Response):
    host: str
    port: int


class NodeEnroll(Request):
    name: ResourceName
    pool: str = "baremetal"
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
