"""Backups, schedules, recovery windows and restores of database instances.

Every database instance has a repository of its own in the backup store (a bucket, keys
that reach that bucket alone, a cipher passphrase), made at its create and kept after its
delete for its backups and recovery window. Its guest agent archives WAL there continuously
and takes backups on request; the platform keeps a row per backup, runs schedules and
retention, and restores a backup (or a moment of a window) into a new instance on any flavor.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
import threading

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oneplatform import quotas
from oneplatform.config import Settings
from oneplatform.dbaas import backup_ops
from oneplatform.dbaas.backup_ops import BACKUP_DELETE
from oneplatform.dbaas.datastores import get_datastore
from oneplatform.dbaas.lookup import find_db, find_db_any
from oneplatform.dbaas.reach import agent_client, reach
from oneplatform.dbaas.states import BACKUPS, BackupStatus, DbStatus
from oneplatform.errors import (
    AlreadyExists,
    BackendError,
    Conflict,
    InvalidInput,
    NotFound,
    PlatformError,
)
from oneplatform.guest.bundle import RestoreSettings, StoreSettings
from oneplatform.hostsvc.objectstore import StoreConfig, store_config
from oneplatform.iam import MEMBER, Caller
from oneplatform.ops.engine import enqueue
from oneplatform.ops.service import to_out
from oneplatform.schemas.backups import (
    BackupAccepted,
    BackupCreate,
    BackupOut,
    ScheduleOut,
    ScheduleSet,
)
from oneplatform.secrets import SecretBox, box_for
from oneplatform.store.db import Store
from oneplatform.store.models import Backup, BackupSchedule, DbInstance, new_id, utcnow

log = logging.getLogger(__name__)
LIVE_BACKUP = (BackupStatus.NEW, BackupStatus.BUILDING, BackupStatus.COMPLETED)


# -- repositories --------------------------------------------------------------------------------
def new_repository(db: DbInstance, box: SecretBox) -> None:
    """Give a new database instance its repository's names and secrets (no I/O: the
    create's first step makes the bucket and the keys in the store)."""
    db.repo_bucket = f"onep-db-{db.id}"
    db.repo_access_key = f"OND{secrets.token_hex(8).upper()}"
    db.repo_secret_enc = box.encrypt(secrets.token_urlsafe(30))
    db.repo_cipher_enc = box.encrypt(secrets.token_urlsafe(48))


def guest_store(
    config: StoreConfig,
    db: DbInstance,
    box: SecretBox,
    compute_type: str,
    keys: tuple[str, str] | None = None,
) -> StoreSettings:
    """The repository of ``db`` as a guest on ``compute_type`` reaches it, with ``db``'s own
    keys or others (a restore's read-only ones, :func:`reader_keys`)."""
    assert db.repo_bucket and db.repo_access_key and db.repo_secret_enc and db.repo_cipher_enc
    access, secret = keys or (db.repo_access_key, box.decrypt(db.repo_secret_enc))
    if config.shared is not None:  # an external store: the operator's keys
        access, secret = config.shared.access_key, config.shared.secret_key
    address, port = config.guest_path(compute_type)
    bucket, path = config.location(db.repo_bucket)
    return StoreSettings(
        host=config.host_name,
        address=address,
        port=port,
        bucket=bucket,
        access_key=access,
        secret_key=secret,
        ca_pem=config.ca_pem,
        cipher_pass=box.decrypt(db.repo_cipher_enc),
        region=config.region,
        path=path,
    )


def reader_user(restoring: DbInstance) -> str:
    """The store identity of the read-only keys ``restoring`` restores with."""
    return f"r-{restoring.id}"


def reader_keys(restoring: DbInstance, box: SecretBox) -> tuple[str, str]:
    """Read-only keys for the source's repository that the new instance ``restoring``
    restores with: derived from its own secret (a retried create names the same ones),
    made by its create's first step and removed when the create ends."""
    assert restoring.repo_secret_enc
    digest = hashlib.sha256(f"reader:{box.decrypt(restoring.repo_secret_enc)}".encode())
    return "ONR" + digest.hexdigest()[:16].upper(), digest.hexdigest()[16:56]


# -- reading ------------------------------------------------------------------------------------
def to_out_backup(session: Session, backup: Backup) -> BackupOut:
    db = session.get_one(DbInstance, backup.db_instance_id)
    parent = session.get(Backup, backup.parent_id) if backup.parent_id else None
    return BackupOut(
        id=backup.id,
        name=backup.name,
        database=db.name,
        database_id=db.id,
        type=backup.type,
        status=backup.status,
        status_message=backup.status_message,
        scheduled=backup.scheduled,
        parent=parent.name if parent else None,
        size_bytes=backup.size_bytes,
        repo_size_bytes=backup.repo_size_bytes,
        started_at=backup.started_at,
        finished_at=backup.finished_at,
        wal_start=backup.wal_start,
        wal_stop=backup.wal_stop,
        created_at=backup.created_at,
    )


def find_backup(session: Session, caller: Caller, ident: str) -> Backup:
    backup = session.scalars(
        select(Backup).where(
            Backup.project_id == caller.project_id,
            Backup.deleted_at.is_(None),
            (Backup.id == ident) | (Backup.name == ident),
        )
    ).first()
    if backup is None:
        raise NotFound(f"backup {ident!r} not found", code="backup_not_found")
    return backup


def list_backups(store: Store, caller: Caller, database: str | None = None) -> list[BackupOut]:
    with store.session() as session:
        query = select(Backup).where(
            Backup.project_id == caller.project_id, Backup.deleted_at.is_(None)
        )
        if database:
            query = query.where(Backup.db_instance_id == find_db_any(session, caller, database).id)
        rows = session.scalars(query.order_by(Backup.created_at))
        return [to_out_backup(session, b) for b in rows]


def get_backup(store: Store, caller: Caller, ident: str) -> BackupOut:
    with store.session() as session:
        return to_out_backup(session, find_backup(session, caller, ident))


def window(session: Session, db: DbInstance) -> tuple[dt.datetime | None, dt.datetime | None]:
    """(restorable_from, restorable_until): from the end of the oldest completed backup to
    the last moment known archived (now, for a live instance whose backups exist)."""
    first = session.scalars(
        select(Backup.finished_at)
        .where(
            Backup.db_instance_id == db.id,
            Backup.status == BackupStatus.COMPLETED.value,
            Backup.deleted_at.is_(None),
        )
        .order_by(Backup.finished_at)
    ).first()
    if first is None:
        return None, None
    until = db.archived_until
    if until is None or until < first:
        until = first
    return first, until


# -- backups ------------------------------------------------------------------------------------
def create_backup(
    store: Store,
    settings: Settings,
    caller: Caller,
    ident: str,
    req: BackupCreate,
    *,
    scheduled: bool = False,
) -> BackupAccepted:
    try:
        with store.session() as session:
            db = find_db(session, caller, ident)
            get_datastore(db.datastore).require_backup_type(db.version, req.type)
            if db.status != DbStatus.ACTIVE.value:
                raise Conflict(
                    f"database instance {db.name!r} is {db.status}, not ACTIVE",
                    code="invalid_state",
                    status=db.status,
                )
            if not db.repo_bucket:
                raise Conflict(
                    f"database instance {db.name!r} has no backup repository (it was made "
                    "before backups existed)",
                    code="no_repository",
                )
            if req.type != "full" and not _has_completed_full(session, db):
                raise Conflict(
                    f"a {req.type} backup needs a full backup of {db.name!r} first",
                    code="no_full_backup",
                )
            quotas.require(session, caller.project_id, quotas.Need(backups=1))
            stamp = utcnow().strftime("%Y%m%d-%H%M%S")
            backup = Backup(
                id=new_id(),
                project_id=caller.project_id,
                db_instance_id=db.id,
                name=req.name or f"{db.name[:40]}-{stamp}-{req.type}",
                type=req.type,
                scheduled=scheduled,
            )
            BACKUPS.created(session, backup, "backup requested")
            session.add(backup)
            session.flush()
            op = enqueue(session, backup_ops.BACKUP_CREATE, backup.id, caller.project_id)
            return BackupAccepted(operation=to_out(op), backup=to_out_backup(session, backup))
    except IntegrityError:
        raise AlreadyExists(
            f"a backup named {req.name!r} already exists", code="backup_exists"
        ) from None


def _has_completed_full(session: Session, db: DbInstance) -> bool:
    return _completed_fulls(session, db) > 0


def _completed_fulls(session: Session, db: DbInstance) -> int:
    return len(
        session.scalars(
            select(Backup.id).where(
                Backup.db_instance_id == db.id,
                Backup.type == "full",
                Backup.status == BackupStatus.COMPLETED.value,
                Backup.deleted_at.is_(None),
            )
        ).all()
    )


def dependents(session: Session, backup: Backup) -> list[Backup]:
    """The live backups that build on ``backup``, directly or not."""
    found: list[Backup] = []
    frontier = [backup.id]
    while frontier:
        rows = list(
            session.scalars(
                select(Backup).where(
                    Backup.parent_id.in_(frontier),
                    Backup.deleted_at.is_(None),
                    Backup.status.in_([s.value for s in LIVE_BACKUP]),
                )
            )
        )
        found += rows
        frontier = [r.id for r in rows]
    return found


def delete_backup(store: Store, caller: Caller, ident: str) -> BackupAccepted:
    with store.session() as session:
        backup = find_backup(session, caller, ident)
        if backup.status in (BackupStatus.NEW.value, BackupStatus.BUILDING.value):
            raise Conflict(
                f"backup {backup.name!r} is {backup.status}: wait for it to end",
                code="invalid_state",
                status=backup.status,
            )
        if backup.status == BackupStatus.DELETING.value:
            raise Conflict(
                f"backup {backup.name!r} is already being deleted",
                code="invalid_state",
                status=backup.status,
            )
        later = dependents(session, backup)
        if later:
            names = ", ".join(sorted(b.name for b in later))
            raise Conflict(
                f"backup {backup.name!r} cannot be deleted alone: {names} depend on it "
                "(delete them first)",
                code="backup_has_dependents",
                dependents=sorted(b.name for b in later),
            )
        db = session.get_one(DbInstance, backup.db_instance_id)
        if (
            backup.type == "full"
            and backup.status == BackupStatus.COMPLETED.value
            and db.status != DbStatus.DELETED.value
            and _completed_fulls(session, db) == 1
        ):
            # pgBackRest keeps one full backup in a live repository whatever it is told.
            raise Conflict(
                f"backup {backup.name!r} is the only full backup of {db.name!r}: take another "
                "full backup first (or delete the database instance)",
                code="last_full_backup",
            )
        BACKUPS.move(session, backup, BackupStatus.DELETING, "delete requested")
        op = enqueue(session, backup_ops.BACKUP_DELETE, backup.id, caller.project_id)
        return BackupAccepted(operation=to_out(op), backup=to_out_backup(session, backup))


# -- schedules ----------------------------------------------------------------------------------
def set_schedule(store: Store, caller: Caller, ident: str, req: ScheduleSet) -> ScheduleOut:
    if req.full_every_seconds is not None and req.full_every_seconds < req.every_seconds:
        raise InvalidInput(
            "full_every_seconds must not be shorter than every_seconds", code="invalid_input"
        )
    with store.session() as session:
        db = find_db(session, caller, ident)
        # Between fulls the schedule takes incremental backups.
        get_datastore(db.datastore).require_backup_type(
            db.version, "full" if req.full_every_seconds is None else "incr"
        )
        schedule = session.get(BackupSchedule, db.id)
        if schedule is None:
            schedule = BackupSchedule(db_instance_id=db.id, project_id=db.project_id)
            session.add(schedule)
        schedule.every_seconds = req.every_seconds
        schedule.full_every_seconds = req.full_every_seconds
        schedule.keep_days = req.keep_days
        schedule.next_run_at = utcnow()
        schedule.message = ""
        session.flush()
        return _schedule_out(db, schedule)


def get_schedule(store: Store, caller: Caller, ident: str) -> ScheduleOut:
    with store.session() as session:
        db = find_db(session, caller, ident)
        schedule = session.get(BackupSchedule, db.id)
        if schedule is None:
            raise NotFound(f"database instance {db.name!r} has no schedule", code="no_schedule")
        return _schedule_out(db, schedule)


def delete_schedule(store: Store, caller: Caller, ident: str) -> None:
    with store.session() as session:
        db = find_db(session, caller, ident)
        schedule = session.get(BackupSchedule, db.id)
        if schedule is None:
            raise NotFound(f"database instance {db.name!r} has no schedule", code="no_schedule")
        session.delete(schedule)


def _schedule_out(db: DbInstance, schedule: BackupSchedule) -> ScheduleOut:
    return ScheduleOut(
        database=db.name,
        every_seconds=schedule.every_seconds,
        full_every_seconds=schedule.full_every_seconds,
        keep_days=schedule.keep_days,
        next_run_at=schedule.next_run_at,
        message=schedule.message,
    )


# -- restore ------------------------------------------------------------------------------------
def _fmt_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def restore_plan(
    session: Session,
    settings: Settings,
    caller: Caller,
    restoring: DbInstance,
    datastore: str,
    version: str,
    compute_type: str,
    backup_ident: str | None,
    source_ident: str | None,
    to_time: dt.datetime | None,
) -> tuple[RestoreSettings, DbInstance]:
    """What a new instance restores at its first start (checked: the backup is COMPLETED
    and of the same datastore version; the time inside the window), and its source."""
    if backup_ident and source_ident:
        raise InvalidInput("give either restore or restore_from, not both", code="invalid_input")
    if source_ident and to_time is None:
        raise InvalidInput("restore_from needs to_time", code="invalid_input")
    if to_time is not None and to_time.tzinfo is None:
        to_time = to_time.replace(tzinfo=dt.UTC)
    box = box_for(settings)
    if backup_ident:
        backup = find_backup(session, caller, backup_ident)
        if backup.status != BackupStatus.COMPLETED.value:
            raise Conflict(
                f"backup {backup.name!r} is {backup.status}, not COMPLETED",
                code="invalid_state",
                status=backup.status,
            )
        source = session.get_one(DbInstance, backup.db_instance_id)
    else:
        assert source_ident is not None
        source = find_db_any(session, caller, source_ident)
        backup = None
    if (source.datastore, source.version) != (datastore, version):
        raise InvalidInput(
            f"the backup is of {source.datastore} {source.version}: restore it as that",
            code="datastore_mismatch",
        )
    start, until = window(session, source)
    if start is None or until is None:
        raise Conflict(
            f"database instance {source.name!r} has no completed backup to restore from",
            code="no_backup",
        )
    if to_time is not None:
        low = backup.finished_at if backup is not None and backup.finished_at else start
        if not low <= to_time <= until:
            raise InvalidInput(
                f"{to_time.isoformat()} is outside the recovery window of {source.name!r}: "
                f"{low.isoformat()} to {until.isoformat()}",
                code="outside_window",
                restorable_from=low.isoformat(),
                restorable_until=until.isoformat(),
            )
    if backup is None:
        assert to_time is not None
        backup = session.scalars(
            select(Backup)
            .where(
                Backup.db_instance_id == source.id,
                Backup.status == BackupStatus.COMPLETED.value,
                Backup.deleted_at.is_(None),
                Backup.finished_at <= to_time,
            )
            .order_by(Backup.finished_at.desc())
        ).first()
        assert backup is not None
    assert backup.label is not None
    config = store_config(settings)
    return (
        RestoreSettings(
            store=guest_store(config, source, box, compute_type, reader_keys(restoring, box)),
            backup_set=backup.label,
            target_time=_fmt_time(to_time) if to_time is not None else "",
        ),
        source,
    )


def archive_now(store: Store, settings: Settings, db_id: str) -> dt.datetime | None:
    """Have a live instance archive the WAL written so far, and move the end of its window
    to that moment; None when it cannot (not running, agent unreachable)."""
    box = box_for(settings)
    with store.session() as session:
        db = session.get_one(DbInstance, db_id)
        live = (DbStatus.ACTIVE.value, DbStatus.DELETING.value)  # a delete archives last
        if db.status not in live or not db.repo_bucket or not db.instance_id:
            return None
        r = reach(session, db, box)
    try:
        moment = dt.datetime.fromtimestamp(agent_client(r, timeout=90.0).archive_now(), dt.UTC)
    except BackendError:  # BackendUnavailable included
        return None
    with store.session() as session:
        db = session.get_one(DbInstance, db_id)
        if db.archived_until is None or db.archived_until < moment:
            db.archived_until = moment
    return moment


def advance_window(
    store: Store,
    settings: Settings,
    caller: Caller,
    backup_ident: str | None,
    source_ident: str | None,
    to_time: dt.datetime | None,
) -> None:
    """Before a restore to a moment after what is known archived of a live source: have it
    archive what it has written (so a moment of a minute ago is inside the window)."""
    if to_time is None:
        return
    moment = to_time if to_time.tzinfo else to_time.replace(tzinfo=dt.UTC)
    with store.session() as session:
        try:
            if backup_ident:
                source = session.get_one(
                    DbInstance, find_backup(session, caller, backup_ident).db_instance_id
                )
            elif source_ident:
                source = find_db_any(session, caller, source_ident)
            else:
                return
        except NotFound:
            return  # the create reports it
        if source.archived_until is not None and moment <= source.archived_until:
            return
        source_id = source.id
    archive_now(store, settings, source_id)


# -- schedules and retention --------------------------------------------------------------------
def schedule_once(store: Store, settings: Settings) -> None:
    """Take the backups that are due, and expire what the schedules' retention lets go."""
    now = utcnow()
    with store.session() as session:
        schedules = list(session.scalars(select(BackupSchedule)))
        due = [(s.db_instance_id, s.project_id) for s in schedules if s.next_run_at <= now]
        retained = [(s.db_instance_id, s.keep_days) for s in schedules]
    for db_id, project_id in due:
        _run_due(store, settings, db_id, project_id, now)
    for db_id, keep_days in retained:
        _retain(store, db_id, now - dt.timedelta(days=keep_days))


def _run_due(
    store: Store, settings: Settings, db_id: str, project_id: str, now: dt.datetime
) -> None:
    with store.session() as session:
        schedule = session.get_one(BackupSchedule, db_id)
        db = session.get_one(DbInstance, db_id)
        busy = session.scalars(
            select(Backup.id).where(
                Backup.db_instance_id == db_id,
                Backup.status.in_([BackupStatus.NEW.value, BackupStatus.BUILDING.value]),
            )
        ).first()
        if db.status != DbStatus.ACTIVE.value or busy:
            schedule.message = (
                f"skipped at {now:%Y-%m-%d %H:%M:%S}: the instance is {db.status}"
                if not busy
                else "waiting for the running backup"
            )
            if not busy:
                schedule.next_run_at = now + dt.timedelta(seconds=schedule.every_seconds)
            return
        full_every = schedule.full_every_seconds
        full = (
            full_every is None
            or schedule.last_full_at is None
            or now - schedule.last_full_at >= dt.timedelta(seconds=full_every)
            or not _completed_full(session, db_id)
        )
        kind, name = ("full" if full else "incr"), db.name
    try:
        create_backup(
            store,
            settings,
            Caller(project_id, "", MEMBER, "backup-scheduler"),
            db_id,
            BackupCreate(type=kind),
            scheduled=True,
        )
        message = ""
    except PlatformError as err:
        message = f"the scheduled backup of {name!r} was refused: {err.message}"
    with store.session() as session:
        schedule = session.get_one(BackupSchedule, db_id)
        schedule.next_run_at = now + dt.timedelta(seconds=schedule.every_seconds)
        if kind == "full" and not message:
            schedule.last_full_at = now
        schedule.message = message


def _completed_full(session: Session, db_id: str) -> bool:
    return (
        session.scalars(
            select(Backup.id).where(
                Backup.db_instance_id == db_id,
                Backup.type == "full",
                Backup.status == BackupStatus.COMPLETED.value,
            )
        ).first()
        is not None
    )


def _retain(store: Store, db_id: str, start: dt.datetime) -> None:
    """Keep what recovering to any moment since ``start`` needs: the newest full backup that
    ended before it and everything after; expire the rest."""
    with store.session() as session:
        done = list(
            session.scalars(
                select(Backup)
                .where(
                    Backup.db_instance_id == db_id,
                    Backup.status == BackupStatus.COMPLETED.value,
                    Backup.deleted_at.is_(None),
                )
                .order_by(Backup.finished_at)
            )
        )
        anchor = None
        for backup in done:
            if backup.type == "full" and backup.finished_at and backup.finished_at <= start:
                anchor = backup
        if anchor is None or anchor.finished_at is None:
            return
        for backup in done:
            if backup.finished_at is not None and backup.finished_at < anchor.finished_at:
                BACKUPS.move(session, backup, BackupStatus.DELETING, "expired by retention")
                enqueue(session, BACKUP_DELETE, backup.id, backup.project_id)


def run_backup_scheduler(store: Store, settings: Settings, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            schedule_once(store, settings)
        except Exception:  # the loop must outlive a broken store connection
            log.exception("backup scheduler round failed")
        stop.wait(settings.backup_schedule_interval_seconds)
