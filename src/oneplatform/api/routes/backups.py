from __future__ import annotations

from fastapi import APIRouter, Response, status

from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.errors import declared
from oneplatform.dbaas import backups as service
from oneplatform.schemas.backups import (
    BackupAccepted,
    BackupCreate,
    BackupOut,
    ScheduleOut,
    ScheduleSet,
)

router = APIRouter(tags=["backups"], responses=declared(401, 403, 404, 409, 413, 422, 503))
ACCEPTED = status.HTTP_202_ACCEPTED


@router.post("/db/instances/{ident}/backups", response_model=BackupAccepted, status_code=ACCEPTED)
def create_backup(
    ident: str, body: BackupCreate, platform: PlatformDep, caller: CallerDep
) -> BackupAccepted:
    """Back the database instance up (full, diff or incr) into its repository."""
    return service.create_backup(platform.store, platform.settings, caller, ident, body)


@router.get("/backups", response_model=list[BackupOut])
def list_backups(
    platform: PlatformDep, caller: CallerDep, database: str | None = None
) -> list[BackupOut]:
    """The project's backups (of one database instance, deleted or not, with ``database``)."""
    return service.list_backups(platform.store, caller, database)


@router.get("/backups/{ident}", response_model=BackupOut)
def show_backup(ident: str, platform: PlatformDep, caller: CallerDep) -> BackupOut:
    return service.get_backup(platform.store, caller, ident)


@router.delete("/backups/{ident}", response_model=BackupAccepted, status_code=ACCEPTED)
def delete_backup(ident: str, platform: PlatformDep, caller: CallerDep) -> BackupAccepted:
    """Expire the backup in the repository (409 while later backups depend on it)."""
    return service.delete_backup(platform.store, caller, ident)


@router.get("/db/instances/{ident}/backup-schedule", response_model=ScheduleOut)
def show_schedule(ident: str, platform: PlatformDep, caller: CallerDep) -> ScheduleOut:
    return service.get_schedule(platform.store, caller, ident)


@router.put("/db/instances/{ident}/backup-schedule", response_model=ScheduleOut)
def set_schedule(
    ident: str, body: ScheduleSet, platform: PlatformDep, caller: CallerDep
) -> ScheduleOut:
    """Back up every ``every_seconds`` (full every ``full_every_seconds``, incremental in
    between) and keep ``keep_days`` of recovery window; the first run is due at once."""
    return service.set_schedule(platform.store, caller, ident, body)


@router.delete("/db/instances/{ident}/backup-schedule", status_code=status.HTTP_204_NO_CONTENT)
def delete_schedule(ident: str, platform: PlatformDep, caller: CallerDep) -> Response:
    """Stop scheduled backups; the backups made so far stay."""
    service.delete_schedule(platform.store, caller, ident)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
