"""Storage growth of a database instance (``onep db resize NAME --size-gb N``), and its
auto-growth (``onep db autogrow NAME --max-gb N``).

Every member's data volume grows (the primary's and each replica's: a replica must hold what
its primary holds), through the compute layer, which asks each compute type's driver and
refuses up front, with the driver's reason, where it cannot grow storage, and past the most
a member's device holds (a node's disk: ``409 no_room_on_disk``). Then each member's guest
agent grows its filesystem into the grown disk, online (a VM's ext4 with ``resize2fs``; a
node's data partition first, then its ext4; a container's volume has no filesystem of its
own to grow). Storage only grows: a smaller or equal size is refused. Nothing here knows the
compute type.

Auto-growth: once the guest agent reports the data filesystem over :data:`AUTOGROW_FULL` full
(the health checker asks it every round), the storage grows by half (at least 1 GB), up to
the database's cap, through the same operation. Only where a volume's size is what the
guest gets (a VM's disk, a node's data partition), not where it is a record (a container's
volume is a directory of the host's storage: what the guest reports there is the host's).

A growth that fails leaves the database ACTIVE (it serves on, at its former size, with the
reason in its status message); asking again completes it, since every step is idempotent.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

from sqlalchemy.orm import Session

from oneplatform import quotas
from oneplatform.compute.capabilities import Capability
from oneplatform.compute.catalog import require_capability
from oneplatform.compute.drivers import driver_class
from oneplatform.compute.drivers.base import SupportsGrowStorage
from oneplatform.compute.instances import grow_volume, volume_growth_gb
from oneplatform.config import Settings
from oneplatform.dbaas.endpoints import live_members
from oneplatform.dbaas.lookup import find_db
from oneplatform.dbaas.reach import DATA_VOLUME, agent_client, reach
from oneplatform.dbaas.service import storage_ceiling, to_out_db
from oneplatform.dbaas.states import DATABASES, DbStatus, MemberStatus
from oneplatform.errors import (
    BackendUnavailable,
    ClientError,
    Conflict,
    InvalidInput,
    NotYet,
    PlatformError,
)
from oneplatform.iam import Caller
from oneplatform.ops.engine import StepContext, enqueue
from oneplatform.ops.kinds import Intent
from oneplatform.ops.service import to_out
from oneplatform.ops.steps import check_not_superseded, deadline, define
from oneplatform.schemas.compute import ComputeType
from oneplatform.schemas.databases import (
    DbInstanceAccepted,
    DbInstanceOut,
    StorageAutogrow,
    StorageResize,
)
from oneplatform.secrets import box_for
from oneplatform.store.db import Store
from oneplatform.store.models import DbInstance, Instance, Operation, utcnow

log = logging.getLogger(__name__)

GIB = 1024**3
AUTOGROW_FULL = 0.8  # auto-growth starts once the data filesystem is this full
AUTOGROW_FACTOR = 1.5  # and grows the storage by half
# resize2fs of a large filesystem under TCG takes a while; the agent gives it 600 s.
GROW_FS_TIMEOUT_S = 660.0


# -- request -----------------------------------------------------------------------------------
def check_storage_quota(
    session: Session, caller: Caller | None, db: DbInstance, more_gb: int
) -> None:
    """The project's storage quota before a growth takes ``more_gb`` GB more of its hosts'
    disks (every member's volume together; ``caller`` None: an auto-growth, held by the
    same quota): ``403 quota_exceeded`` naming ``storage_gb``."""
    quotas.require(session, db.project_id, quotas.Need(storage_gb=more_gb))


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
    storage_cannot_shrink``, ``422 same_size``), a database that is not ACTIVE, a compute
    type that cannot grow storage (``409 capability_not_supported``, with the driver's
    reason), more than a member's device holds (``409 no_room_on_disk``: a node's disk,
    shown as the database's ``max_size_gb``), a host without that much disk left (``409
    no_room_on_host``)."""
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
        op = request_growth(session, caller, db, req.size_gb)
        return DbInstanceAccepted(operation=to_out(op), instance=to_out_db(session, db))


def request_growth(
    session: Session, caller: Caller | None, db: DbInstance, size_gb: int, why: str = ""
) -> Operation:
    """Check that every member can grow to ``size_gb`` (capability, room on its host, the
    quota) and enqueue the growth, in the caller's transaction."""
    if db.status != DbStatus.ACTIVE.value:
        raise Conflict(
            f"cannot grow the storage of database instance {db.name!r} while it is {db.status}",
            code="invalid_state",
            status=db.status,
        )
    more = sum(
        volume_growth_gb(session, session.get_one(Instance, i), DATA_VOLUME, size_gb)
        for i in _instances(session, db)
    )
    check_storage_quota(session, caller, db, more)
    message = f"storage growth {db.size_gb} -> {size_gb} GB" + (f" ({why})" if why else "")
    DATABASES.move(session, db, DbStatus.RESIZE, message)
    return enqueue(session, DB_GROW_STORAGE, db.id, db.project_id, {"size_gb": size_gb})


def set_autogrow(
    store: Store, settings: Settings, caller: Caller, ident: str, req: StorageAutogrow
) -> DbInstanceOut:
    """Turn auto-growth on (up to ``req.max_gb``) or off (None). Refused where a member's
    compute type cannot grow storage (``409 capability_not_supported``), for a cap not
    above the current size (``422 invalid_input``) or above the most a member's device
    holds (``409 no_room_on_disk``)."""
    with store.session() as session:
        db = find_db(session, caller, ident)
        if req.max_gb is not None:
            if req.max_gb <= db.size_gb:
                raise InvalidInput(
                    f"database instance {db.name!r} has {db.size_gb} GB already: the cap of "
                    "auto-growth must be above it",
                    code="invalid_input",
                )
            ids = _instances(session, db)
            for i in ids:
                require_capability(
                    session.get_one(Instance, i).compute_type, Capability.GROW_STORAGE
                )
            most = storage_ceiling(session, ids)
            if most is not None and req.max_gb > most:
                raise Conflict(
                    f"database instance {db.name!r} can grow to {most} GB at most (the end of "
                    "a member's disk): the cap of auto-growth must not be above it",
                    code="no_room_on_disk",
                    max_size_gb=most,
                )
        db.autogrow_max_gb = req.max_gb
        return to_out_db(session, db)


def autogrow_target(db: DbInstance) -> int | None:
    """The size auto-growth grows ``db`` to now, or None: on, ACTIVE, below its cap, and
    its data filesystem last reported at least :data:`AUTOGROW_FULL` full."""
    cap, total, used = db.autogrow_max_gb, db.storage_total_bytes, db.storage_used_bytes
    if cap is None or db.status != DbStatus.ACTIVE.value or not total or used is None:
        return None
    if used / total < AUTOGROW_FULL or db.size_gb >= cap:
        return None
    return min(cap, max(db.size_gb + 1, math.ceil(db.size_gb * AUTOGROW_FACTOR)))


def _sizes_enforced(session: Session, db: DbInstance) -> bool:
    """Whether every member's volume size is what its guest gets (see the module)."""
    for i in _instances(session, db):
        driver = driver_class(ComputeType(session.get_one(Instance, i).compute_type))
        if not issubclass(driver, SupportsGrowStorage) or not driver.VOLUME_SIZE_ENFORCED:
            return False
    return True


def autogrow(session: Session, db: DbInstance) -> Operation | None:
    """Start an auto-growth of ``db`` if it is due (the health checker's round, in its
    transaction); one that cannot be done now is logged and left in its status message."""
    target = autogrow_target(db)
    if target is None:
        return None
    try:
        if not _sizes_enforced(session, db):
            return None
        # request_growth raises before it writes anything
        return request_growth(session, None, db, target, "auto-growth")
    except ClientError as err:
        log.warning("auto-growth of %s to %s GB: %s", db.name, target, err.message)
        DATABASES.move(session, db, DbStatus.ACTIVE, f"auto-growth refused: {err.message}")
        return None


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


def record_usage(db: DbInstance, usage: dict[str, Any], at: dt.datetime | None = None) -> None:
    """Keep what a guest agent said of its data filesystem at ``at`` (now by default),
    ignoring what is not numbers and a reading older than the one kept (a health round
    that asked before a growth answers after it)."""
    if at is not None and db.storage_checked_at is not None and at <= db.storage_checked_at:
        return
    try:
        total, used = int(usage["total_bytes"]), int(usage["used_bytes"])
        free = int(usage["free_bytes"])
    except (KeyError, TypeError, ValueError):
        return
    db.storage_total_bytes, db.storage_used_bytes, db.storage_free_bytes = total, used, free
    db.storage_checked_at = at or utcnow()


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
