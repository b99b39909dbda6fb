from __future__ import annotations

from fastapi import APIRouter, Query, status

from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.errors import declared
from oneplatform.compute import instances as service
from oneplatform.errors import InvalidInput
from oneplatform.schemas.instances import (
    ConsoleOut,
    ExecOut,
    ExecRequest,
    InstanceAccepted,
    InstanceAction,
    InstanceCreate,
    InstanceOut,
    InstanceResize,
    SnapshotRequest,
)

router = APIRouter(tags=["instances"], responses=declared(401, 403, 404, 409, 413, 422, 502, 503))
ACCEPTED = status.HTTP_202_ACCEPTED


@router.get("/instances", response_model=list[InstanceOut])
def list_instances(platform: PlatformDep, caller: CallerDep) -> list[InstanceOut]:
    return service.list_instances(platform.store, caller)


@router.post("/instances", response_model=InstanceAccepted, status_code=ACCEPTED)
def create_instance(
    body: InstanceCreate, platform: PlatformDep, caller: CallerDep
) -> InstanceAccepted:
    """Place the instance and start building it; returns the operation to wait on."""
    return service.create_instance(platform.store, caller, body)


@router.get("/instances/{ident}", response_model=InstanceOut)
def show_instance(ident: str, platform: PlatformDep, caller: CallerDep) -> InstanceOut:
    """An instance by id or name."""
    return service.get_instance(platform.store, caller, ident)


@router.delete("/instances/{ident}", response_model=InstanceAccepted, status_code=ACCEPTED)
def delete_instance(ident: str, platform: PlatformDep, caller: CallerDep) -> InstanceAccepted:
    return service.delete_instance(platform.store, caller, ident)


@router.post("/instances/{ident}/action", response_model=InstanceAccepted, status_code=ACCEPTED)
def act(
    ident: str, body: InstanceAction, platform: PlatformDep, caller: CallerDep
) -> InstanceAccepted:
    """Start, stop or reboot (``force``: a reset, where the compute type can)."""
    if body.force and body.action != "reboot":
        raise InvalidInput("force applies to reboot only", code="invalid_input")
    return service.act(platform.store, caller, ident, body.action, force=body.force)


@router.post("/instances/{ident}/resize", response_model=InstanceAccepted, status_code=ACCEPTED)
def resize(
    ident: str, body: InstanceResize, platform: PlatformDep, caller: CallerDep
) -> InstanceAccepted:
    """Change vCPUs and RAM in place (compute types with the resize capability)."""
    return service.resize(platform.store, caller, ident, body.flavor)


@router.get("/instances/{ident}/console", response_model=ConsoleOut)
def console(
    ident: str,
    platform: PlatformDep,
    caller: CallerDep,
    tail: int = Query(default=200, ge=1, le=10000),
) -> ConsoleOut:
    return service.console(platform.store, platform.settings, caller, ident, tail)


@router.post("/instances/{ident}/exec", response_model=ExecOut)
def exec_in(ident: str, body: ExecRequest, platform: PlatformDep, caller: CallerDep) -> ExecOut:
    """Run a command inside the instance (compute types with the exec capability)."""
    return service.exec_in(
        platform.store, platform.settings, caller, ident, body.command, body.timeout
    )


@router.post("/instances/{ident}/snapshot", response_model=InstanceAccepted, status_code=ACCEPTED)
def snapshot(
    ident: str, body: SnapshotRequest, platform: PlatformDep, caller: CallerDep
) -> InstanceAccepted:
    """Snapshot the instance's disks (compute types with the snapshot capability)."""
    return service.snapshot(platform.store, caller, ident, body.name)
