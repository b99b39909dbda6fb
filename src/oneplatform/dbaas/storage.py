"""Storage growth of a database instance (``onep db resize NAME --size-gb N``).

Every member's data volume grows (the primary's and each replica's: a replica must hold what
its primary holds), through the compute layer, which asks each compute type's driver and
refuses up front, with the driver's reason, where it cannot grow storage (bare metal). Then
each member's guest agent grows its filesystem into the grown disk, online (a VM's ext4 with
``resize2fs``; a container's volume has no filesystem of its own to grow). Storage only
grows: a smaller or equal size is refused. Nothing here knows the compute type.

A growth that fails leaves the database ACTIVE (it serves on, at its former size, with the
reason in its status message); asking again completes it, since every step is idempotent.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from oneplatform.compute.instances import grow_volume, volume_growth_gb
from oneplatform.config import Settings
from oneplatform.dbaas.endpoints import live_members
from oneplatform.dbaas.health import record_usage
from oneplatform.dbaas.lookup import find_db
from oneplatform.dbaas.reach import DATA_VOLUME, agent_client, reach
from oneplatform.dbaas.service import to_out_db
from oneplatform.dbaas.states import DATABASES, DbStatus, MemberStatus
from oneplatform.errors import BackendUnavailable, Conflict, InvalidInput, NotYet, PlatformError
from oneplatform.iam import Caller
from oneplatform.ops.engine import StepContext, enqueue
from oneplatform.ops.kinds import Intent
from oneplatform.ops.service import to_out
from oneplatform.ops.steps import check_not_superseded, deadline, define
from oneplatform.schemas.databases import DbInstanceAccepted, StorageResize
from oneplatform.secrets import box_for
from oneplatform.store.db import Store
from oneplatform.store.models import DbInstance, Instance

log = logging.getLogger(__name__)

GIB = 1024**3
# resize2fs of a large filesystem under TCG takes a while; the agent gives it 600 s.
GROW_FS_TIMEOUT_S = 660.0


# -- request -----------------------------------------------------------------------------------
def check_storage_quota(session: Session, caller: Caller, db: DbInstance, more_gb: int) -> None:
    """Where a project's storage quota is enforced before a growth takes ``more_gb`` GB more
    of its hosts' disks (every member's volume together). Quotas are not part of this
    growth: this is the one place to call them from; it refuses nothing yet."""


def _instances(session: Session, db: DbInstance) -> list[str]:
    """The compute instances of the database's members (the primary's first)."""
    members = sorted(live_members(session, db.id), key=lambda m: m.role != "primary")
    for m in members:
        if m.status != MemberStatus.ACTIVE.value:
            raise Conflict(
                f"member {m.name!r} of {db.name!r} is {m.status}: grow its storage once every "
                "member is ACTIVE",
                code="invalid_state",
                status=m.status,
            )
    ids = [m.instance_id for m in members]
    if not ids and db.instance_id:
        ids = [db.instance_id]
    return ids


def resize_storage(
    store: Store, settings: Settings, caller: Caller, ident: str, req: StorageResize
) -> DbInstanceAccepted:
    """Grow the data volume of every member to ``req.size_gb``; an operation (202). Refused
    up front, with nothing changed: a size not larger than the current one (``409
    storage_cannot_shrink``, ``409 same_size``), a database that is not ACTIVE, a compute
    type that cannot grow storage (``409 capability_not_supported``, with the driver's
    reason), a host without that much disk left (``409 no_room_on_host``)."""
    with store.session() as session:
        db = find_db(session, caller, ident)
        if req.size_gb < db.size_gb:
            raise Conflict(
                f"database instance {db.name!r} has {db.size_gb} GB of storage: storage only "
                f"grows (a filesystem cannot be shrunk under a running engine); to use less, "
                f"restore a backup onto a new database of {req.size_gb} GB",
                code="storage_cannot_shrink",
            )
        if req.size_gb == db.size_gb:
            raise InvalidInput(
                f"database instance {db.name!r} has {db.size_gb} GB of storage already",
                code="same_size",
            )
        if db.status != DbStatus.ACTIVE.value:
            raise Conflict(
                f"cannot grow the storage of database instance {db.name!r} while it is {db.status}",
                code="invalid_state",
                status=db.status,
            )
        more = sum(
            volume_growth_gb(session, session.get_one(Instance, i), DATA_VOLUME, req.size_gb)
            for i in _instances(session, db)
        )
        check_storage_quota(session, caller, db, more)
        DATABASES.move(
            session, db, DbStatus.RESIZE, f"storage growth {db.size_gb} -> {req.size_gb} GB"
        )
        op = enqueue(session, DB_GROW_STORAGE, db.id, caller.project_id, {"size_gb": req.size_gb})
        return DbInstanceAccepted(operation=to_out(op), instance=to_out_db(session, db))


# -- operation ---------------------------------------------------------------------------------
def _db(session: Session, ctx: StepContext) -> DbInstance:
    db = session.get_one(DbInstance, ctx.resource_id)
    check_not_superseded(ctx, DATABASES, db)
    return db


def step_volumes(ctx: StepContext) -> None:
    """Grow every member's data volume (online where the compute type allows)."""
    size = int(ctx.params["size_gb"])
    with ctx.store.session() as session:
        ids = _instances(session, _db(session, ctx))
    for i, instance_id in enumerate(ids):
        ctx.progress(f"growing data volume {i + 1} of {len(ids)} to {size} GB")
        try:
            grow_volume(ctx.store, ctx.settings, instance_id, DATA_VOLUME, size)
        except BackendUnavailable as err:
            deadline(ctx, "the growth of the data volumes")
            raise NotYet(f"the host is not answering: {err.message}", retry_after=2.0) from None


def step_filesystems(ctx: StepContext) -> None:
    """Each member's guest agent grows its filesystem into the grown disk (a no-op where the
    data is not a disk of its own); the primary's usage is recorded."""
    size = int(ctx.params["size_gb"])
    box = box_for(ctx.settings)
    with ctx.store.session() as session:
        db = _db(session, ctx)
        clients = [
            agent_client(reach(session, db, box, instance_id=i), GROW_FS_TIMEOUT_S)
            for i in _instances(session, db)
        ]
    usage: dict[str, Any] | None = None
    for i, client in enumerate(clients):
        ctx.progress(f"growing filesystem {i + 1} of {len(clients)}")
        try:
            answer = client.grow_storage(size * GIB)
        except BackendUnavailable as err:
            deadline(ctx, "the growth of the filesystems")
            raise NotYet(f"waiting for the guest agent: {err.message}", retry_after=1.0) from None
        except PlatformError as err:
            raise PlatformError(
                f"the guest could not grow its filesystem: {err.message}", code="grow_failed"
            ) from err
        usage = usage or answer
    if usage is not None:
        ctx.remember(usage=usage)


def step_finish(ctx: StepContext) -> None:
    with ctx.transaction() as session:
        db = _db(session, ctx)
        db.size_gb = int(ctx.params["size_gb"])
        if ctx.params.get("usage"):
            record_usage(db, ctx.params["usage"])
        DATABASES.move(session, db, DbStatus.ACTIVE, "")


def _failed(session: Session, ctx: StepContext, err: PlatformError) -> None:
    """The database serves on at its former size (ACTIVE, the reason in its message)."""
    db = session.get_one(DbInstance, ctx.resource_id)
    if db.status != DbStatus.RESIZE.value:
        return
    log.warning("storage growth of %s failed: %s", db.name, err.message)
    message = f"storage growth to {ctx.params.get('size_gb')} GB failed: {err.message}"
    DATABASES.move(session, db, DbStatus.ACTIVE, message)


DB_GROW_STORAGE = define(
    "db.storage.grow",
    "db_instance",
    Intent.ACTION,
    ("volumes", step_volumes),
    ("filesystems", step_filesystems),
    ("finish", step_finish),
    on_failure=_failed,
    description="Grow every member's data volume, then its filesystem, online where the "
    "compute type allows.",
)
