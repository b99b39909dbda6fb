"""Operation kinds of backups: take one through the guest agent, delete one in the store."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneplatform.dbaas.datastores import get_datastore
from oneplatform.dbaas.reach import agent_client, reach
from oneplatform.dbaas.states import BACKUPS, BackupStatus, DbStatus
from oneplatform.errors import BackendError, BackendUnavailable, NotYet, PlatformError
from oneplatform.hostsvc.objectstore import repository_tool
from oneplatform.ops.engine import StepContext
from oneplatform.ops.kinds import Intent
from oneplatform.ops.steps import check_not_superseded, deadline, define, fail_resource
from oneplatform.secrets import box_for
from oneplatform.store.models import Backup, DbInstance, utcnow

BACKUP_TIMEOUT_S = 6 * 3600.0


def load_backup(session: Session, ctx: StepContext) -> Backup:
    return session.get_one(Backup, ctx.resource_id)


def _backup(session: Session, ctx: StepContext) -> Backup:
    backup = load_backup(session, ctx)
    check_not_superseded(ctx, BACKUPS, backup)
    return backup


def _ts(value: Any) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(float(value), dt.UTC) if value else None


# -- create -------------------------------------------------------------------------------------
def step_start(ctx: StepContext) -> None:
    """Ask the instance's agent to start the backup (waits while another one runs, or
    while its repository is being set up)."""
    if ctx.params.get("job"):
        return
    with ctx.store.session() as session:
        backup = _backup(session, ctx)
        db = session.get_one(DbInstance, backup.db_instance_id)
        if db.status != DbStatus.ACTIVE.value:
            raise PlatformError(
                f"database instance {db.name!r} is {db.status}", code="invalid_state"
            )
        r = reach(session, db, box_for(ctx.settings))
        kind = backup.type
    try:
        answer = agent_client(r, timeout=15.0).start_backup(kind)
    except BackendUnavailable as err:
        deadline(ctx, "the agent's answer")
        raise NotYet(f"waiting for the guest agent: {err.message}", retry_after=2.0) from None
    except BackendError as err:
        code = err.details.get("agent_code")
        if code in ("busy", "no_repository"):
            deadline(ctx, "a free backup slot" if code == "busy" else "the repository")
            raise NotYet(err.message, retry_after=2.0) from None
        raise
    job = answer["job"]
    ctx.remember(job=job["id"])
    with ctx.transaction() as session:
        backup = _backup(session, ctx)
        backup.started_at = _ts(job.get("started_at")) or utcnow()
        BACKUPS.move(session, backup, BackupStatus.BUILDING, "the agent runs the backup")


def step_wait(ctx: StepContext) -> None:
    """Follow the agent's job until it ends."""
    with ctx.store.session() as session:
        backup = _backup(session, ctx)
        db = session.get_one(DbInstance, backup.db_instance_id)
        r = reach(session, db, box_for(ctx.settings))
    try:
        state = agent_client(r, timeout=15.0).backups()
    except BackendUnavailable as err:
        deadline(ctx, "the backup", BACKUP_TIMEOUT_S)
        raise NotYet(f"waiting for the guest agent: {err.message}", retry_after=3.0) from None
    job = state.get("job") or {}
    if job.get("id") != ctx.params["job"]:
        raise PlatformError(
            "the backup was interrupted: the guest agent restarted while it ran",
            code="backup_interrupted",
        )
    if job.get("state") == "running":
        deadline(ctx, "the backup", BACKUP_TIMEOUT_S)
        ctx.progress("the agent runs the backup")
        raise NotYet("the backup is running", retry_after=1.0)
    if job.get("state") != "succeeded":
        raise PlatformError(f"the backup failed: {job.get('detail')}", code="backup_failed")
    ctx.remember(entry=job.get("backup") or {})


def step_record(ctx: StepContext) -> None:
    """Keep what the repository says of the backup; it is COMPLETED."""
    entry: dict[str, Any] = ctx.params.get("entry") or {}
    with ctx.transaction() as session:
        backup = _backup(session, ctx)
        db = session.get_one(DbInstance, backup.db_instance_id)
        backup.label = str(entry.get("label") or "") or None
        backup.type = str(entry.get("type") or backup.type)
        prior = entry.get("prior")
        if prior:
            parent = session.scalars(
                select(Backup).where(Backup.db_instance_id == db.id, Backup.label == prior)
            ).first()
            backup.parent_id = parent.id if parent else None
        times = entry.get("timestamp") or {}
        backup.started_at = _ts(times.get("start")) or backup.started_at
        backup.finished_at = _ts(times.get("stop")) or utcnow()
        info = entry.get("info") or {}
        backup.size_bytes = info.get("size")
        backup.repo_size_bytes = (info.get("repository") or {}).get("delta")
        archive = entry.get("archive") or {}
        backup.wal_start, backup.wal_stop = archive.get("start"), archive.get("stop")
        if db.archived_until is None or db.archived_until < backup.finished_at:
            db.archived_until = backup.finished_at
        BACKUPS.move(session, backup, BackupStatus.COMPLETED, "")


# -- delete -------------------------------------------------------------------------------------
def step_expire(ctx: StepContext) -> None:
    """Expire the backup in the repository, and the archived WAL older than the oldest
    backup left (the whole repository once its instance is gone and this was its last
    backup)."""
    with ctx.store.session() as session:
        backup = load_backup(session, ctx)
        db = session.get_one(DbInstance, backup.db_instance_id)
        label = backup.label
        others = session.scalars(
            select(Backup.status).where(
                Backup.db_instance_id == db.id,
                Backup.id != backup.id,
                Backup.deleted_at.is_(None),
            )
        ).all()
        tool = repository_tool(
            ctx.settings, db, box_for(ctx.settings), get_datastore(db.datastore).repository_kind
        )
        gone = db.status == DbStatus.DELETED.value
    if gone and not others:
        tool.destroy()
        return
    running = (BackupStatus.NEW.value, BackupStatus.BUILDING.value)
    # label absent from the repository: a retried step, or expired with its parent
    tool.expire(label, in_flight=sum(1 for status in others if status in running))


def step_deleted(ctx: StepContext) -> None:
    with ctx.transaction() as session:
        backup = load_backup(session, ctx)
        BACKUPS.move(session, backup, BackupStatus.DELETED, "")
        backup.deleted_at = utcnow()


BACKUP_CREATE = define(
    "backup.create",
    "backup",
    Intent.CREATE,
    ("start", step_start),
    ("wait", step_wait),
    ("record", step_record),
    on_failure=fail_resource(BACKUPS, load_backup),
)
BACKUP_DELETE = define(
    "backup.delete",
    "backup",
    Intent.DELETE,
    ("expire", step_expire),
    ("finish", step_deleted),
    on_failure=fail_resource(BACKUPS, load_backup),
)
