"""Replicas, switchover and moves: a database instance as a group of members.

A database instance has one primary member and up to seven streaming replicas, each on a
compute instance of its own, of any flavor and compute type. Replicas reach the primary
through the endpoint proxy's replication hub, as the database's replication role; the
database's stable endpoints follow its primary (docs/replication.md).

A **switchover** (to a replica): the read-write endpoint refuses, the primary shuts down
cleanly (its last WAL reaches the replicas as it does) and restarts as a standby; once the
target has replayed the primary's shutdown checkpoint it is promoted, the endpoint leads to
it and takes connections again. A target that does not catch up within the timeout is not
promoted: the former primary is promoted back and serves as before. A **move** is a
replica on the new flavor, caught up, a switchover to it, and the former primary retired.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oneplatform import quotas
from oneplatform.compute.catalog import flavor_by_name
from oneplatform.compute.drivers.base import VolumeSpec
from oneplatform.compute.instances import place_instance, request_delete
from oneplatform.compute.operations import create_wait_limit
from oneplatform.compute.states import InstanceStatus
from oneplatform.config import Settings
from oneplatform.dbaas import backups, configurations
from oneplatform.dbaas.agent_client import AgentClient
from oneplatform.dbaas.datastores import get_datastore, get_version
from oneplatform.dbaas.datastores.features import Feature
from oneplatform.dbaas.endpoints import (
    PRIMARY,
    REPLICA,
    drop_member,
    live_members,
    member_out,
    sync_proxy,
)
from oneplatform.dbaas.lookup import find_db
from oneplatform.dbaas.reach import DATA_PATH, DATA_VOLUME, agent_client, make_bundle, reach
from oneplatform.dbaas.states import DATABASES, MEMBERS, BackupStatus, DbStatus, MemberStatus
from oneplatform.errors import (
    AlreadyExists,
    BackendError,
    BackendUnavailable,
    Conflict,
    InvalidInput,
    NotFound,
    NotYet,
    PlatformError,
)
from oneplatform.guest.bundle import AdminCredentials, Bundle, UpstreamSettings
from oneplatform.guest.sealing import seal
from oneplatform.hostsvc.objectstore import GUEST_FORWARD_ADDRESS, store_config
from oneplatform.hostsvc.proxy import REPLICA_SLOTS, EndpointProxy, ProxyError, repl_user
from oneplatform.iam import Caller
from oneplatform.images.recipes import load_recipe
from oneplatform.ops.engine import StepContext, enqueue
from oneplatform.ops.kinds import Intent
from oneplatform.ops.service import to_out
from oneplatform.ops.steps import deadline, define
from oneplatform.schemas.databases import (
    DbMemberOut,
    MoveRequest,
    ReplicaAccepted,
    ReplicaCreate,
    SwitchoverRequest,
)
from oneplatform.schemas.operations import OperationOut
from oneplatform.secrets import SecretBox, box_for, generate_password
from oneplatform.store.db import Store
from oneplatform.store.models import (
    Backup,
    DbInstance,
    DbMember,
    Event,
    Flavor,
    Instance,
    Operation,
    new_id,
)

log = logging.getLogger(__name__)

MANAGED_BY = "dbaas"
# Settings a hot standby needs at least as high as its primary's (PostgreSQL pauses replay,
# and refuses a promotion, otherwise). Every member of a group has the same values: a new
# member takes the group's (the highest its members run with), whatever its flavor, so that
# it can follow the primary and, promoted, be followed by the others.
_FLOORED = ("max_connections", "max_worker_processes")
# A switchover refuses to start while its target is further behind than this.
MAX_START_LAG_BYTES = 64 * 1024 * 1024
# A switchover's target streams only for its timeout and this much more (then by itself
# fetches from the repository again, if the switchover did not come).
PREPARE_MARGIN_S = 30.0
# How long a switchover waits, before its pause, for the primary's completed WAL to be
# archived (a shutdown waits for the archiver: better before the pause than in it).
ARCHIVE_WAIT_S = 30.0
# How long a switchover waits for a member's engine that is starting (after the previous one).
ENGINE_WAIT_S = 120.0
AGENT_WAIT_S = 60.0  # how long a silent agent is asked again before a switch gives up


# -- reading ------------------------------------------------------------------------------------
def _primary_status(session: Session, settings: Settings, db: DbInstance) -> dict[str, Any] | None:
    """What the primary says of its replicas (None when it does not answer)."""
    try:
        r = reach(session, db, box_for(settings))
        return agent_client(r, timeout=3.0).replication()
    except PlatformError:
        return None


def list_members(store: Store, settings: Settings, caller: Caller, ident: str) -> list[DbMemberOut]:
    """The group's members, the primary first, with each replica's lag behind it."""
    with store.session() as session:
        db = find_db(session, caller, ident)
        members = live_members(session, db.id)
        status = _primary_status(session, settings, db) if len(members) > 1 else None
        rows = sorted(members, key=lambda m: (m.role != PRIMARY, m.created_at))
        return [member_out(session, db, m, status) for m in rows]


def find_member(session: Session, caller: Caller, name: str) -> DbMember:
    member = session.scalars(
        select(DbMember).where(
            DbMember.project_id == caller.project_id,
            DbMember.deleted_at.is_(None),
            (DbMember.id == name) | (DbMember.name == name),
        )
    ).first()
    if member is None:
        raise NotFound(f"replica {name!r} not found", code="replica_not_found")
    return member


# -- making a member ----------------------------------------------------------------------------
def upstream_for(
    settings: Settings,
    db: DbInstance,
    box: SecretBox,
    compute_type: str,
    name: str,
    from_backup: bool = False,
) -> UpstreamSettings:
    """The primary as a member on ``compute_type`` reaches it: the replication hub."""
    assert db.repl_password_enc
    host = settings.service_address if compute_type == "container" else GUEST_FORWARD_ADDRESS
    return UpstreamSettings(
        host=host,
        port=settings.replication_port,
        user=repl_user(db.id),
        password=box.decrypt(db.repl_password_enc),
        name=name,
        from_backup=from_backup,
    )


def _ensure_replication_role(store: Store, settings: Settings, db_id: str) -> None:
    """The database's replication role on its primary (made at its first replica)."""
    box = box_for(settings)
    with store.session() as session:
        db = session.get_one(DbInstance, db_id)
        if db.repl_password_enc is None:
            db.repl_password_enc = box.encrypt(generate_password())
    with store.session() as session:
        db = session.get_one(DbInstance, db_id)
        r = reach(session, db, box)
        password = box.decrypt(db.repl_password_enc or "")
    try:
        agent_client(r, timeout=30.0).ensure_replication_role(repl_user(db_id), password)
    except BackendUnavailable as err:
        raise Conflict(
            f"the primary does not answer, so no replica can be made now: {err.message}",
            code="primary_unavailable",
        ) from None
    sync_proxy(store, settings)  # the hub's route for relayed replicas (its key is new)


def _group_settings(session: Session, settings: Settings, db: DbInstance) -> dict[str, str]:
    """The highest value of each _FLOORED setting the group's live members run with (their
    bundles; the primary's flavor's when none has one)."""
    box = box_for(settings)
    values = []
    for m in live_members(session, db.id):
        instance = session.get(Instance, m.instance_id)
        if instance is not None and instance.bundle_enc:
            values.append(dict(Bundle.from_json(box.decrypt(instance.bundle_enc)).engine.settings))
    if not values:
        primary_flavor = session.get_one(Flavor, db.flavor_id)
        datastore = get_datastore(db.datastore)
        values.append(datastore.engine_settings(primary_flavor.vcpus, primary_flavor.ram_mb))
    return {
        key: str(max(int(v[key]) for v in values if key in v))
        for key in _FLOORED
        if any(key in v for v in values)
    }


def _backup_seeds(store: Store, settings: Settings, db_id: str) -> bool:
    """Whether new replicas are seeded from the latest backup plus the repository's WAL (the
    primary then ships only what is new): the database has a backup, and its primary has
    just archived what it wrote, so the repository leads a replica up to the primary's
    timeline at once (no wait for ``archive_timeout``). Else pg_basebackup."""
    box = box_for(settings)
    with store.session() as session:
        db = session.get_one(DbInstance, db_id)
        if not settings.backups or not db.repo_bucket or not db.instance_id:
            return False
        backup = session.scalars(
            select(Backup.id).where(
                Backup.db_instance_id == db.id,
                Backup.status == BackupStatus.COMPLETED.value,
                Backup.deleted_at.is_(None),
            )
        ).first()
        if backup is None:
            return False
        r = reach(session, db, box)
    try:
        agent_client(r).archive_now(timeout=20.0)
    except PlatformError as err:
        log.info("replicas of %s are seeded from the primary: %s", db_id, err.message)
        return False
    return True


def _db_bundle(
    settings: Settings,
    db: DbInstance,
    flavor: Flavor,
    engine: Mapping[str, str],
    standby: UpstreamSettings | None = None,
    configuration: Mapping[str, str] | None = None,
) -> str:
    """A bundle of ``db`` on ``flavor``: its identity, credentials, agent secret and
    repository, running with ``engine`` and its configuration group's values; a replica's
    when ``standby`` names its upstream."""
    box = box_for(settings)
    datastore = get_datastore(db.datastore)
    config = store_config(settings) if settings.backups and db.repo_bucket else None
    return make_bundle(
        db.id,
        datastore,
        db.version,
        flavor.vcpus,
        flavor.ram_mb,
        AdminCredentials(db.admin_username, box.decrypt(db.admin_password_enc)),
        AdminCredentials(datastore.platform_username, box.decrypt(db.platform_password_enc))
        if db.platform_password_enc
        else None,
        box.decrypt(db.agent_secret_enc),
        load_recipe(get_version(datastore, db.version).image).ports,
        backup=backups.guest_store(config, db, box, flavor.compute_type) if config else None,
        standby=standby,
        engine_settings=engine,
        configuration=configuration,
    )


def _place_member(
    session: Session,
    settings: Settings,
    db: DbInstance,
    flavor: Flavor,
    name: str,
    from_backup: bool = False,
    credit: quotas.Need | None = None,
) -> DbMember:
    """A new replica member on ``flavor``: its bundle (seeded from the primary, following
    it) and its compute instance, placed in the caller's transaction (``credit``: what the
    request gives back, against the project's quota)."""
    box = box_for(settings)
    datastore = get_datastore(db.datastore)
    engine = datastore.engine_settings(flavor.vcpus, flavor.ram_mb)
    group = _group_settings(session, settings, db)
    for key in _FLOORED:
        if key in engine and key in group:
            engine[key] = group[key]
    seeded = from_backup and settings.backups and bool(db.repo_bucket)
    bundle = _db_bundle(
        settings,
        db,
        flavor,
        engine,
        standby=upstream_for(settings, db, box, flavor.compute_type, name, seeded),
        configuration=configurations.values_for(session, db),
    )
    image = get_version(datastore, db.version).image
    member_id = new_id()
    instance, _ = place_instance(
        session,
        db.project_id,
        f"db-{member_id[:12]}",
        flavor,
        image,
        managed_by=MANAGED_BY,
        bundle_enc=box.encrypt(bundle),
        volumes=[VolumeSpec(DATA_VOLUME, db.size_gb, DATA_PATH)],
        credit=credit,
    )
    member = DbMember(
        id=member_id,
        db_id=db.id,
        project_id=db.project_id,
        name=name,
        instance_id=instance.id,
        role=REPLICA,
    )
    MEMBERS.created(session, member, f"replica of {db.name} on {flavor.name}")
    session.add(member)
    session.flush()
    return member


def member_name_taken(
    session: Session, project_id: str, name: str, other_than: str | None = None
) -> bool:
    """Whether a live member of the project (but ``other_than``) is named ``name``."""
    query = select(DbMember.id).where(
        DbMember.project_id == project_id,
        DbMember.name == name,
        DbMember.deleted_at.is_(None),
    )
    if other_than is not None:
        query = query.where(DbMember.id != other_than)
    return session.scalars(query).first() is not None


def _next_name(session: Session, db: DbInstance) -> str:
    """NAME-r<n>: the first n no member of the project has now, nor any of this database
    ever had (events and history keep naming one member)."""
    used = set(
        session.scalars(
            select(DbMember.name).where(
                DbMember.project_id == db.project_id,
                (DbMember.deleted_at.is_(None)) | (DbMember.db_id == db.id),
            )
        )
    )
    n = 1
    while f"{db.name}-r{n}" in used:
        n += 1
    return f"{db.name}-r{n}"


def _check_ready(session: Session, db: DbInstance, action: str, *needs: Feature) -> None:
    get_datastore(db.datastore).require(db.version, *needs)
    if db.status != DbStatus.ACTIVE.value:
        raise Conflict(
            f"cannot {action} database instance {db.name!r} while it is {db.status}",
            code="invalid_state",
            status=db.status,
        )
    if len(live_members(session, db.id)) >= REPLICA_SLOTS:
        raise Conflict(
            f"database instance {db.name!r} has {REPLICA_SLOTS} members already",
            code="too_many_replicas",
        )


def _new_replica(
    store: Store,
    settings: Settings,
    caller: Caller,
    ident: str,
    flavor_name: str | None,
    name: str | None,
    action: str,
    credit_former: bool = False,
) -> tuple[str, str]:
    """Check, make the replication role, then place the member: (db id, member id). With
    ``credit_former`` (a move) the primary it replaces is credited against the quota."""
    with store.session() as session:
        db = find_db(session, caller, ident)
        _check_ready(session, db, action, Feature.REPLICAS)
        if name is not None and member_name_taken(session, db.project_id, name):
            raise AlreadyExists(f"a member named {name!r} already exists", code="replica_exists")
        flavor_by_name(
            session,
            flavor_name or session.get_one(Flavor, db.flavor_id).name,
            db.project_id,
        )
        db_id = db.id
    _ensure_replication_role(store, settings, db_id)
    from_backup = _backup_seeds(store, settings, db_id)
    try:
        with store.session() as session:
            db = session.get_one(DbInstance, db_id)
            _check_ready(session, db, action)
            flavor = flavor_by_name(
                session,
                flavor_name or session.get_one(Flavor, db.flavor_id).name,
                db.project_id,
            )
            credit = None
            if credit_former:
                former = session.get_one(Instance, _primary_member(session, db).instance_id)
                credit = compute_credit(former)
            member = _place_member(
                session,
                settings,
                db,
                flavor,
                name or _next_name(session, db),
                from_backup,
                credit,
            )
            return db_id, member.id
    except IntegrityError:
        raise AlreadyExists(
            f"a member named {name!r} already exists", code="replica_exists"
        ) from None


def compute_credit(instance: Instance) -> quotas.Need:
    """What an instance on its way out gives back to its project's quota."""
    return quotas.compute_need(instance.vcpus, instance.ram_mb, instance.disk_gb)


def add_members(
    store: Store,
    settings: Settings,
    db_id: str,
    count: int,
    flavor_name: str | None,
    credit: quotas.Need | None = None,
) -> list[str]:
    """Replicas until the group has ``count`` (a create's ``--replicas``), each with its
    operation; idempotent. The ids of the group's replicas. ``credit``: what the request
    gives back against the quota (a failover's discarded primary)."""
    _ensure_replication_role(store, settings, db_id)
    with store.session() as session:
        have = [m for m in live_members(session, db_id) if m.role == REPLICA]
    from_backup = len(have) < count and _backup_seeds(store, settings, db_id)
    with store.session() as session:
        db = session.get_one(DbInstance, db_id)
        flavor = flavor_by_name(
            session, flavor_name or session.get_one(Flavor, db.flavor_id).name, db.project_id
        )
        have = [m for m in live_members(session, db_id) if m.role == REPLICA]
        for _ in range(count - len(have)):
            member = _place_member(
                session, settings, db, flavor, _next_name(session, db), from_backup, credit
            )
            enqueue(session, DB_REPLICA_CREATE, member.id, db.project_id)
            have.append(member)
        return [m.id for m in have]


def create_replica(
    store: Store, settings: Settings, caller: Caller, ident: str, req: ReplicaCreate
) -> ReplicaAccepted:
    db_id, member_id = _new_replica(
        store, settings, caller, ident, req.flavor, req.name, "add a replica to"
    )
    with store.session() as session:
        db = session.get_one(DbInstance, db_id)
        member = session.get_one(DbMember, member_id)
        op = enqueue(session, DB_REPLICA_CREATE, member_id, caller.project_id)
        return ReplicaAccepted(operation=to_out(op), replica=member_out(session, db, member))


def delete_replica(store: Store, caller: Caller, name: str) -> ReplicaAccepted:
    with store.session() as session:
        member = find_member(session, caller, name)
        db = session.get_one(DbInstance, member.db_id)
        if member.role == PRIMARY:
            raise Conflict(
                f"{member.name!r} is the primary of {db.name!r}: switch over to another "
                "member first, or delete the database instance",
                code="is_primary",
            )
        if db.status in (DbStatus.SWITCHOVER.value, DbStatus.RESIZE.value):
            raise Conflict(f"database instance {db.name!r} is in {db.status}", code="invalid_state")
        if member.status == MemberStatus.DELETING.value:
            raise Conflict(
                f"replica {member.name!r} is already being deleted", code="invalid_state"
            )
        MEMBERS.move(session, member, MemberStatus.DELETING, "delete requested")
        op = enqueue(session, DB_REPLICA_DELETE, member.id, caller.project_id)
        return ReplicaAccepted(operation=to_out(op), replica=member_out(session, db, member))


def switchover(
    store: Store, settings: Settings, caller: Caller, ident: str, req: SwitchoverRequest
) -> OperationOut:
    with store.session() as session:
        db = find_db(session, caller, ident)
        _check_ready(session, db, "switch over", Feature.SWITCHOVER)
        replicas = [
            m
            for m in live_members(session, db.id)
            if m.role == REPLICA and m.status == MemberStatus.ACTIVE.value
        ]
        if req.to is not None:
            target = find_member(session, caller, req.to)
            if target.db_id != db.id:
                raise InvalidInput(
                    f"{req.to!r} is not a member of {db.name!r}", code="invalid_input"
                )
            if target.role == PRIMARY:
                raise Conflict(f"{target.name!r} is the primary already", code="is_primary")
            if target.status != MemberStatus.ACTIVE.value:
                raise Conflict(f"replica {target.name!r} is {target.status}", code="invalid_state")
        elif replicas:
            target = _most_advanced(session, settings, db, replicas)
        else:
            raise Conflict(f"database instance {db.name!r} has no replica", code="no_replica")
        DATABASES.move(session, db, DbStatus.SWITCHOVER, f"switchover to {target.name} requested")
        op = enqueue(
            session,
            DB_SWITCHOVER,
            db.id,
            caller.project_id,
            {"target": target.id, "timeout": req.timeout_seconds},
        )
        return to_out(op)


def _most_advanced(
    session: Session, settings: Settings, db: DbInstance, replicas: list[DbMember]
) -> DbMember:
    status = _primary_status(session, settings, db) or {}
    replay = {r["name"]: r.get("replay_bytes") or 0 for r in status.get("replicas", [])}
    return max(replicas, key=lambda m: (replay.get(m.name, -1), m.created_at))


def move(
    store: Store, settings: Settings, caller: Caller, ident: str, req: MoveRequest
) -> OperationOut:
    """A replica on ``req.flavor``, then a switchover to it, then the former primary goes."""
    with store.session() as session:
        db = find_db(session, caller, ident)
        get_datastore(db.datastore).require(db.version, Feature.MOVE)
        flavor = flavor_by_name(session, req.flavor, db.project_id)
        if flavor.id == db.flavor_id:
            raise InvalidInput(
                f"database instance {db.name!r} is on flavor {flavor.name!r} already",
                code="same_flavor",
            )
    db_id, member_id = _new_replica(
        store, settings, caller, ident, req.flavor, None, "move", credit_former=True
    )
    with store.session() as session:
        db = session.get_one(DbInstance, db_id)
        former = _primary_member(session, db)
        DATABASES.move(session, db, DbStatus.RESIZE, f"move to {req.flavor} requested")
        op = enqueue(
            session,
            DB_MOVE,
            db.id,
            caller.project_id,
            {"target": member_id, "former": former.id, "timeout": req.timeout_seconds},
        )
        return to_out(op)


MOVE_SWITCHOVER_TIMEOUT_S = float(MoveRequest.model_fields["timeout_seconds"].default)


# -- members leaving a host (a cluster's drained node) ----------------------------------------
def prepare_moves(store: Store, settings: Settings, db_ids: list[str]) -> dict[str, bool]:
    """Before members of these databases leave their hosts (:func:`move_off`): each
    database's replication role made on its primary; {db id: whether its new members are
    seeded from its latest backup}."""
    seeds = {}
    for db_id in db_ids:
        _ensure_replication_role(store, settings, db_id)
        seeds[db_id] = _backup_seeds(store, settings, db_id)
    return seeds


def move_off(
    session: Session, settings: Settings, member: DbMember, from_backup: bool, reason: str
) -> Operation:
    """``member`` leaves its host for another of its flavor, in the caller's transaction
    (which has taken that host off the scheduler): a primary moves as :func:`move` does (a
    replica placed elsewhere, a switchover to it, then the former primary goes), a replica
    is replaced (a new one placed elsewhere, this one deleted). The operation to wait for."""
    db = session.get_one(DbInstance, member.db_id)
    leaving = session.get_one(Instance, member.instance_id)
    flavor = session.get_one(Flavor, leaving.flavor_id)
    action = f"move {member.name} of"
    _check_ready(session, db, action, Feature.REPLICAS, Feature.MOVE)
    placed = _place_member(
        session,
        settings,
        db,
        flavor,
        _next_name(session, db),
        from_backup,
        compute_credit(leaving),
    )
    if member.role == PRIMARY:
        DATABASES.move(session, db, DbStatus.RESIZE, reason)
        return enqueue(
            session,
            DB_MOVE,
            db.id,
            db.project_id,
            {"target": placed.id, "former": member.id, "timeout": MOVE_SWITCHOVER_TIMEOUT_S},
        )
    enqueue(session, DB_REPLICA_CREATE, placed.id, db.project_id)
    MEMBERS.move(session, member, MemberStatus.DELETING, reason)
    return enqueue(session, DB_REPLICA_DELETE, member.id, db.project_id)


def _primary_member(session: Session, db: DbInstance) -> DbMember:
    return session.scalars(
        select(DbMember).where(
            DbMember.db_id == db.id, DbMember.deleted_at.is_(None), DbMember.role == PRIMARY
        )
    ).one()


# -- steps: a replica ---------------------------------------------------------------------------
def _member(session: Session, ctx: StepContext) -> DbMember:
    member_id = ctx.params.get("target") or ctx.resource_id
    return session.get_one(DbMember, member_id)


def _check_member_alive(member: DbMember) -> None:
    if member.status in (MemberStatus.DELETING.value, MemberStatus.DELETED.value):
        raise PlatformError(f"replica {member.name!r} is being deleted", code="superseded")


def step_member_compute(ctx: StepContext) -> None:
    with ctx.store.session() as session:
        member = _member(session, ctx)
        _check_member_alive(member)
        instance = session.get_one(Instance, member.instance_id)
        status, message = InstanceStatus(instance.status), instance.status_message
    if status is InstanceStatus.ACTIVE:
        return
    if status in (InstanceStatus.BUILD, InstanceStatus.STARTING, InstanceStatus.REBOOT):
        deadline(ctx, "compute instance start", create_wait_limit(ctx.settings))
        raise NotYet("waiting for the replica's compute instance", retry_after=0.5)
    raise PlatformError(f"the compute instance is {status}: {message}", code="compute_failed")


def _member_agent(
    session: Session, ctx: StepContext, member: DbMember, timeout: float = 5.0
) -> AgentClient:
    db = session.get_one(DbInstance, member.db_id)
    r = reach(session, db, box_for(ctx.settings), instance_id=member.instance_id)
    return agent_client(r, timeout)


def step_member_streaming(ctx: StepContext) -> None:
    """Wait for the replica's engine (its base backup copied, then started as a standby) to
    stream from the primary: connected, and having received what the primary had written
    when asked just before (a receiver that connects and is refused at once, for WAL the
    primary no longer holds, says "streaming" for an instant and never receives a byte)."""
    with ctx.store.session() as session:
        member = _member(session, ctx)
        _check_member_alive(member)
        client = _member_agent(session, ctx, member)
        db = session.get_one(DbInstance, member.db_id)
        primary = _member_agent(session, ctx, _primary_member(session, db))
    try:
        health = client.health()
        if not health.ready:
            if health.engine == "failed" and "pg_basebackup" not in health.detail:
                ctx.progress(f"engine: {health.detail}")
            raise NotYet(f"the replica's engine is {health.engine}: {health.detail}", 1.0)
        written = primary.replication().get("lsn_bytes")  # first: WAL only grows
        status = client.replication()
    except BackendUnavailable as err:
        deadline(ctx, "the replica's start", ctx.settings.ready_timeout_seconds * 4)
        raise NotYet(f"waiting for the replica's agent: {err.message}", 1.0) from None
    except NotYet:
        deadline(ctx, "the replica's start", ctx.settings.ready_timeout_seconds * 4)
        raise
    if status.get("role") != "standby" or status.get("receiver") != "streaming":
        deadline(ctx, "the replica's streaming", ctx.settings.ready_timeout_seconds * 4)
        raise NotYet(f"the replica is {status.get('role')}, receiver {status.get('receiver')}", 1.0)
    received = status.get("receive_bytes") or 0
    if written is not None and received < written:
        deadline(ctx, "the replica's streaming", ctx.settings.ready_timeout_seconds * 4)
        raise NotYet(
            f"the replica's receiver is connected but has received WAL up to byte {received} "
            f"of the primary's {written}",
            1.0,
        )
    ctx.remember(seeded_from=status.get("seeded_from"))


def step_member_active(ctx: StepContext) -> None:
    with ctx.transaction() as session:
        member = _member(session, ctx)
        _check_member_alive(member)
        seeded = {
            "backup": "the latest backup",
            "primary": "the primary (pg_basebackup)",
            "dump": "a dump of the primary (mariadb-dump)",
            "sync": "the primary (a full synchronisation)",
        }
        how = seeded.get(str(ctx.params.get("seeded_from")), "")
        MEMBERS.move(
            session,
            member,
            MemberStatus.ACTIVE,
            "streaming from the primary" + (f"; seeded from {how}" if how else ""),
        )
    sync_proxy(ctx.store, ctx.settings)


def step_member_delete(ctx: StepContext) -> None:
    with ctx.transaction() as session:
        member = _member(session, ctx)
        instance = session.get(Instance, member.instance_id)
        if instance is not None and instance.status != InstanceStatus.DELETED.value:
            request_delete(session, instance, member.project_id)
            pending = True
        else:
            pending = False
    sync_proxy(ctx.store, ctx.settings)  # out of the read-only endpoint at once
    if pending:
        deadline(ctx, "compute instance delete")
        raise NotYet("waiting for the replica's compute instance to be deleted", 0.5)
    with ctx.transaction() as session:
        drop_member(session, _member(session, ctx), "deleted")


def _fail_member(session: Session, ctx: StepContext, err: PlatformError) -> None:
    member = _member(session, ctx)
    if member.status == MemberStatus.DELETED.value:
        return
    if member.status == MemberStatus.DELETING.value and ctx.kind is not DB_REPLICA_DELETE:
        return
    MEMBERS.fail(session, member, f"{ctx.step_name}: {err.message}")


# -- steps: switchover --------------------------------------------------------------------------
def step_switch(ctx: StepContext) -> None:
    """The switchover itself, in one step (it must not wait between its parts)."""
    timeout = float(ctx.params.get("timeout") or 60.0)
    box = box_for(ctx.settings)
    with ctx.store.session() as session:
        db = session.get_one(DbInstance, ctx.resource_id)
        target = _member(session, ctx)
        old = _primary_member(session, db)
        if old.id == target.id:
            return  # done before a restart of this step
        old_reach = reach(session, db, box, instance_id=old.instance_id)
        old_client = agent_client(old_reach, 10.0)
        new_reach = reach(session, db, box, instance_id=target.instance_id)
        new_client = agent_client(new_reach, 10.0)
        old_instance = session.get_one(Instance, old.instance_id)
        upstream = upstream_for(ctx.settings, db, box, old_instance.compute_type, old.name)
        names = (old.name, target.name)
    new_status = _replication(ctx, new_client, names[1], "replica_unavailable")
    if new_status["role"] == "primary":
        _record_switch(ctx, old.id, target.id, "found promoted")  # a retried step
        return
    old_status = _replication(ctx, old_client, f"the primary {names[0]}", "primary_unavailable")
    lag = (old_status.get("lsn_bytes") or 0) - (new_status.get("replay_bytes") or 0)
    if old_status["role"] == "primary" and lag > MAX_START_LAG_BYTES:
        raise PlatformError(
            f"{names[1]} is {lag} bytes behind the primary; nothing was changed",
            code="replica_lagging",
        )
    # The target streams only from now on: when the primary stops it waits for WAL where it
    # sees the promotion at once, not in a repository round trip (an older agent has no such
    # call: the switch goes on without it).
    try:
        new_client.prepare_promotion(timeout + PREPARE_MARGIN_S)
    except BackendError as err:
        log.warning("switchover of %s: preparing %s: %s", db.id, names[1], err.message)
    if old_status["role"] == "primary":
        # A shutdown waits for the archiver's last round: what is completed goes to the
        # repository now, while writes go on (a move's new replica has just had its base
        # backup: a segment and the backup's history file wait). Only time is at stake.
        ctx.progress(f"{names[0]} archives its completed WAL before the pause")
        try:
            old_client.archive_now(timeout=min(ARCHIVE_WAIT_S, timeout / 2), switch=False)
        except PlatformError as err:
            log.warning("switchover of %s: archiving before: %s", db.id, err.message)
        # A checkpoint now, while writes go on, leaves the shutdown's own little to write:
        # the pause below is shorter by what it would have flushed.
        ctx.progress(f"a checkpoint on {names[0]} before the pause")
        try:
            old_reach.datastore.checkpoint(old_reach.engine)
        except PlatformError as err:
            log.warning("switchover of %s: checkpoint: %s", db.id, err.message)
    proxy = EndpointProxy(ctx.settings)
    started = time.monotonic()
    ctx.progress(f"pausing writes at the endpoint; stopping {names[0]}")
    with contextlib.suppress(ProxyError):
        proxy.pause(db.id)
    if old_status["role"] == "primary":
        demoted = old_client.demote(upstream.to_dict())
        if not demoted.get("clean"):
            _resume(ctx, db.id)
            raise PlatformError(
                f"{names[0]} did not shut down cleanly; it serves on as the primary and "
                "nothing was changed",
                code="switchover_failed",
            )
        final = int(demoted["checkpoint_bytes"])
    else:  # demoted by an earlier try of this step
        final = int(old_status.get("replay_bytes") or 0) - 1
    stopped = time.monotonic()
    ctx.progress(f"waiting for {names[1]} to replay the last WAL of {names[0]}")
    left = max(0.0, timeout - (stopped - started))
    try:
        caught_up = new_reach.datastore.wait_replayed(new_reach.engine, final, left) is not None
    except PlatformError as err:
        log.warning("switchover of %s: watching %s failed: %s", db.id, names[1], err.message)
        caught_up = False
    if not caught_up:
        ctx.progress(f"{names[1]} did not catch up in {timeout:.0f} s: rolling back")
        _promote_back(old_client, names[0])
        _resume(ctx, db.id)
        raise PlatformError(
            f"{names[1]} did not catch up within {timeout:.0f} s; {names[0]} is the "
            "primary again and nothing was changed",
            code="switchover_timeout",
        )
    replayed = time.monotonic()
    ctx.progress(f"promoting {names[1]}")
    new_client.promote()
    promoted = time.monotonic()
    _record_switch(
        ctx,
        old.id,
        target.id,
        f"writes paused {time.monotonic() - started:.1f} s: primary demoted in "
        f"{stopped - started:.1f} s, caught up in {replayed - stopped:.1f} s, promoted in "
        f"{promoted - replayed:.1f} s",
    )


def _replication(ctx: StepContext, client: AgentClient, who: str, code: str) -> dict[str, Any]:
    """A member's replication state, before anything is changed: waited for while its engine
    starts (a former primary restarting as a standby after the previous switchover), refused
    if its agent is silent or the engine does not come back."""
    try:
        return client.replication()
    except BackendUnavailable as err:
        if err.details.get("agent_code") == "engine_not_ready":
            deadline(ctx, f"{who}'s engine start", ENGINE_WAIT_S)
            raise NotYet(f"{who}'s engine is starting", retry_after=1.0) from None
        if ctx.elapsed() < AGENT_WAIT_S:  # a busy guest (a base backup under TCG) is slow
            raise NotYet(f"{who} does not answer yet: {err.message}", retry_after=2.0) from None
        raise PlatformError(
            f"{who} does not answer ({err.message}); nothing was changed", code=code
        ) from None


def _promote_back(client: AgentClient, name: str) -> None:
    """The former primary serves again (its agent waits for its restart as a standby)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            client.promote()
            return
        except BackendUnavailable as err:
            if time.monotonic() > deadline:
                raise PlatformError(
                    f"rolling back, {name} could not be promoted back: {err.message}",
                    code="rollback_failed",
                ) from None
            time.sleep(1.0)


def _resume(ctx: StepContext, db_id: str) -> None:
    sync_proxy(ctx.store, ctx.settings, force=[db_id])


def _record_switch(ctx: StepContext, old_id: str, new_id_: str, how: str) -> None:
    with ctx.transaction() as session:
        db = session.get_one(DbInstance, ctx.resource_id)
        old = session.get_one(DbMember, old_id)
        new = session.get_one(DbMember, new_id_)
        instance = session.get_one(Instance, new.instance_id)
        old.role, new.role = REPLICA, PRIMARY
        db.instance_id, db.flavor_id = new.instance_id, instance.flavor_id
        session.add(
            Event(
                resource_type="db_instance",
                resource_id=db.id,
                from_status=db.status,
                to_status=db.status,
                message=f"switchover: {new.name} is the primary, {old.name} a replica ({how})",
            )
        )
    _resume(ctx, ctx.resource_id)
    ctx.remember(switched=True)


def step_retire(ctx: StepContext) -> None:
    """A move's last step: the former primary (now a replica) leaves the group at once and
    its compute is deleted by an operation of its own (a node's cleaning takes minutes; the
    database has moved already). First its shutdown's last archiver round must be over: the
    segment the shutdown closed goes to the repository only then (the switch answered before
    it), the new primary never archives what it received, and deleted before, the repository
    would miss that segment for good: a replica seeded from an older backup could never
    catch up (seen in e2e)."""
    if not ctx.params.get("former_archived"):
        with ctx.store.session() as session:
            former = session.get_one(DbMember, ctx.params["former"])
            name = former.name
            client = _member_agent(session, ctx, former, timeout=ARCHIVE_WAIT_S + 10)
        ctx.progress(f"{name} archives the WAL its shutdown closed")
        try:
            client.archive_now(timeout=ARCHIVE_WAIT_S, switch=False)
        except PlatformError as err:
            stopping = isinstance(err, BackendUnavailable) and (
                err.details.get("agent_code") == "engine_not_ready"
            )
            if stopping:
                deadline(ctx, f"{name}'s restart as a standby", ENGINE_WAIT_S)
                raise NotYet(f"{name} is still stopping", retry_after=1.0) from None
            log.warning("move of %s: %s did not archive its last WAL: %s",
                        ctx.resource_id, name, err.message)  # fmt: skip
        ctx.remember(former_archived=True)
    with ctx.transaction() as session:
        former = session.get_one(DbMember, ctx.params["former"])
        if former.status not in (MemberStatus.DELETING.value, MemberStatus.DELETED.value):
            MEMBERS.move(session, former, MemberStatus.DELETING, "retired by the move")
            enqueue(session, DB_REPLICA_DELETE, former.id, former.project_id)
    sync_proxy(ctx.store, ctx.settings)


def _finish(ctx: StepContext) -> None:
    with ctx.transaction() as session:
        db = session.get_one(DbInstance, ctx.resource_id)
        DATABASES.move(session, db, DbStatus.ACTIVE, "")


def _fail_group(session: Session, ctx: StepContext, err: PlatformError) -> None:
    """A switchover or move that failed: the database serves on from whichever member is
    its primary (ACTIVE, with the error); a move's new member goes."""
    db = session.get_one(DbInstance, ctx.resource_id)
    if db.status in (DbStatus.DELETING.value, DbStatus.DELETED.value):
        return
    # A rollback that failed leaves no member serving writes: ERROR (the message says why).
    status = DbStatus.ERROR if err.code == "rollback_failed" else DbStatus.ACTIVE
    DATABASES.move(session, db, status, f"{ctx.kind.name} failed: {err.message}")
    if ctx.kind is DB_MOVE and not ctx.params.get("switched"):
        member = session.get(DbMember, ctx.params.get("target", ""))
        if member is not None and member.deleted_at is None:
            instance = session.get(Instance, member.instance_id)
            if instance is not None:
                request_delete(session, instance, member.project_id)
            drop_member(session, member, "the move failed")


DB_REPLICA_CREATE = define(
    "db.replica.create",
    "db_member",
    Intent.CREATE,
    ("compute", step_member_compute),
    ("streaming", step_member_streaming),
    ("finish", step_member_active),
    on_failure=_fail_member,
)
DB_REPLICA_DELETE = define(
    "db.replica.delete",
    "db_member",
    Intent.DELETE,
    ("delete", step_member_delete),
    on_failure=_fail_member,
)
DB_SWITCHOVER = define(
    "db.switchover",
    "db_instance",
    Intent.ACTION,
    ("switch", step_switch),
    ("finish", _finish),
    on_failure=_fail_group,
)
DB_MOVE = define(
    "db.move",
    "db_instance",
    Intent.ACTION,
    ("compute", step_member_compute),
    ("streaming", step_member_streaming),
    ("replica", step_member_active),
    ("switch", step_switch),
    ("retire", step_retire),
    ("finish", _finish),
    on_failure=_fail_group,
)


# -- detach: a replica becomes a database of its own --------------------------------------------
def detached_bundle(session: Session, settings: Settings, new: DbInstance, member: DbMember) -> str:
    """``member``'s bundle as the primary of ``new``: the new database's identity, agent
    secret and repository, no upstream, and the engine settings it runs with now."""
    box = box_for(settings)
    instance = session.get_one(Instance, member.instance_id)
    flavor = session.get_one(Flavor, instance.flavor_id)
    current = Bundle.from_json(box.decrypt(instance.bundle_enc or ""))
    return _db_bundle(
        settings,
        new,
        flavor,
        dict(current.engine.settings),
        configuration=configurations.values_for(session, new),
    )


def step_detach(ctx: StepContext) -> None:
    """The replica's agent takes the new database's bundle (sealed with the group's agent
    secret) and promotes its engine, archiving into the new repository. A retry after a lost
    answer finds the new identity answering as a primary."""
    box = box_for(ctx.settings)
    with ctx.store.session() as session:
        new = session.get_one(DbInstance, ctx.resource_id)
        member = session.get_one(DbMember, ctx.params["member"])
        if member.db_id == new.id:
            return  # adopted already
        group = session.get_one(DbInstance, member.db_id)
        bundle = detached_bundle(session, ctx.settings, new, member)
        as_group = reach(session, group, box, instance_id=member.instance_id)
        as_new = reach(session, new, box, instance_id=member.instance_id)
        secret = box.decrypt(group.agent_secret_enc)
        name = member.name
    with contextlib.suppress(PlatformError):
        if agent_client(as_new, timeout=5.0).replication().get("role") == "primary":
            return
    ctx.progress(f"promoting {name} into a database of its own")
    try:
        agent_client(as_group, timeout=10.0).detach(seal(secret, bundle.encode()))
    except BackendUnavailable as err:
        deadline(ctx, "the replica's agent")
        raise NotYet(f"waiting for the replica's agent: {err.message}", retry_after=2.0) from None


def step_adopt(ctx: StepContext) -> None:
    """The member is the new database's primary: its compute instance, flavor and bundle
    are the new database's; it has left its group (and that group's read-only endpoint)."""
    box = box_for(ctx.settings)
    with ctx.transaction() as session:
        new = session.get_one(DbInstance, ctx.resource_id)
        member = session.get_one(DbMember, ctx.params["member"])
        if member.db_id != new.id:
            instance = session.get_one(Instance, member.instance_id)
            instance.bundle_enc = box.encrypt(detached_bundle(session, ctx.settings, new, member))
            group = session.get_one(DbInstance, member.db_id).name
            member.db_id, member.role, member.name = new.id, PRIMARY, new.name
            new.instance_id, new.flavor_id = instance.id, instance.flavor_id
            MEMBERS.move(
                session, member, MemberStatus.ACTIVE, f"the primary (detached from {group})"
            )
    sync_proxy(ctx.store, ctx.settings)


def detach_failed(session: Session, ctx: StepContext, err: PlatformError) -> None:
    """A detach that failed before the member was adopted: it is its group's replica again
    (the agent restores its former settings when its promotion fails); the new database is
    left in ERROR, for the caller to delete (its delete removes no compute)."""
    member = session.get(DbMember, ctx.params["member"])
    if member is None or member.status != MemberStatus.DETACHING.value:
        return
    if member.db_id == ctx.resource_id:
        return
    MEMBERS.move(
        session,
        member,
        MemberStatus.ACTIVE,
        f"detach failed at {ctx.step_name}: {err.message}; still a replica",
    )
