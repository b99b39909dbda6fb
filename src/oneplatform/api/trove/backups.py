"""Trove's backups: the platform's backups of a database instance (full, or incremental on
the last one). Create answers 202 with the backup; delete 202."""

from __future__ import annotations

from fastapi import Request, Response

from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.trove import views
from oneplatform.api.trove.lookup import build
from oneplatform.api.trove.routing import ACCEPTED, Json, trove_router
from oneplatform.api.trove.schemas import BackupCreate
from oneplatform.dbaas import backups, service
from oneplatform.iam import Caller
from oneplatform.schemas.backups import BackupCreate as PlatformBackupCreate
from oneplatform.schemas.backups import BackupOut
from oneplatform.schemas.databases import DbInstanceOut
from oneplatform.store.db import Store

router = trove_router()


def _views(store: Store, caller: Caller, found: list[BackupOut]) -> list[Json]:
    dbs: dict[str, DbInstanceOut] = {db.id: db for db in service.list_dbs(store, caller)}
    return [views.backup(b, dbs.get(b.database_id)) for b in found]


def _listing(
    request: Request, platform: PlatformDep, caller: Caller, db: str | None, kind: str
) -> Json:
    found = backups.list_backups(platform.store, caller, db)
    chosen, more = views.page(request, found, lambda b: b.id, kind)
    return views.listing("backups", _views(platform.store, caller, chosen), more)


@router.get("/backups")
def list_backups(request: Request, platform: PlatformDep, caller: CallerDep) -> Json:
    """The project's backups (``?instance_id=`` those of one instance), ``?limit=&marker=``."""
    instance = request.query_params.get("instance_id") or None
    return _listing(request, platform, caller, instance, "backups")


@router.get("/instances/{instance_id}/backups")
def list_instance_backups(
    instance_id: str, request: Request, platform: PlatformDep, caller: CallerDep
) -> Json:
    return _listing(request, platform, caller, instance_id, f"instances/{instance_id}/backups")


@router.get("/backups/{backup_id}")
def show_backup(backup_id: str, platform: PlatformDep, caller: CallerDep) -> Json:
    """A backup by id or name."""
    found = backups.get_backup(platform.store, caller, backup_id)
    return {"backup": _views(platform.store, caller, [found])[0]}


@router.post("/backups", status_code=ACCEPTED)
def create_backup(body: BackupCreate, platform: PlatformDep, caller: CallerDep) -> Json:
    """A full backup of ``instance`` (id or name); ``incremental`` (or a ``parent_id``): one
    on top of the last backup."""
    spec = body.backup
    kind = "incr" if spec.incremental or spec.parent_id else "full"
    req = build(PlatformBackupCreate, name=spec.name, type=kind)
    made = backups.create_backup(platform.store, platform.settings, caller, spec.instance, req)
    return {"backup": _views(platform.store, caller, [made.backup])[0]}


@router.delete("/backups/{backup_id}", status_code=ACCEPTED)
def delete_backup(backup_id: str, platform: PlatformDep, caller: CallerDep) -> Response:
    backups.delete_backup(platform.store, caller, backup_id)
    return Response(status_code=ACCEPTED)
