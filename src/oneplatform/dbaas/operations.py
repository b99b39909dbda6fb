"""Operation kinds of the database service. Nothing here knows the compute type."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneplatform.compute.instances import request_delete
from oneplatform.compute.operations import INSTANCE_REPAIR, create_wait_limit
from oneplatform.compute.reconciler import RECOVERABLE, request_repair
from oneplatform.compute.states import InstanceStatus
from oneplatform.dbaas import replicas
from oneplatform.dbaas.backups import archive_now, reader_keys, reader_user
from oneplatform.dbaas.datastores import get_datastore
from oneplatform.dbaas.endpoints import PRIMARY, drop_member, live_members, sync_proxy
from oneplatform.dbaas.reach import Reach, agent_client, compute_status, reach
from oneplatform.dbaas.states import DATABASES, MEMBERS, DbStatus, Health, MemberStatus
from oneplatform.dbaas.warm import WARM_WANTED, warm_client
from oneplatform.errors import BackendUnavailable, NotYet, PlatformError
from oneplatform.guest.sealing import seal
from oneplatform.hostsvc.objectstore import StoreAdmin
from oneplatform.ops.engine import StepContext
from oneplatform.ops.kinds import OPEN, Intent, OperationKind, StepFn
from oneplatform.ops.steps import (
    check_not_superseded,
    deadline,
    define,
    fail_resource,
    wait_for_others,
)
from oneplatform.secrets import SecretBox, box_for
from oneplatform.store.models import (
    DbInstance,
    DbMember,
    Instance,
    Operation,
    WarmInstance,
    utcnow,
)


def load_db(session: Session, ctx: StepContext) -> DbInstance:
    return session.get_one(DbInstance, ctx.resource_id)


def _db(session: Session, ctx: StepContext) -> DbInstance:
    """The operation's database instance; stops the operation once a delete took over."""
    db = load_db(session, ctx)
    check_not_superseded(ctx, DATABASES, db)
    return db


def pending(box: SecretBox, db: DbInstance) -> dict[str, Any]:
    """The initial databases and users (with passwords) the create has still to apply."""
    if not db.pending_enc:
        return {"databases": [], "users": []}
    data: dict[str, Any] = json.loads(box.decrypt(db.pending_enc))
    return data


# -- create ------------------------------------------------------------------------------------
def step_repository(ctx: StepContext) -> None:
    """Make the instance's repository in the backup store (its bucket, and keys that reach
    it alone) and, for a restore, read-only keys to its source's; the guest retries its
    side until they exist."""
    box = box_for(ctx.settings)
    with ctx.store.session() as session:
        db = _db(session, ctx)
        if not db.repo_bucket or not db.repo_access_key or not db.repo_secret_enc:
            return
        own = (db.repo_bucket, db.repo_access_key, box.decrypt(db.repo_secret_enc))
        source_id = ctx.params.get("restore_source")
        source = session.get_one(DbInstance, source_id) if source_id else None
        reader = (
            (source.repo_bucket or "", reader_user(db), *reader_keys(db, box)) if source else None
        )
    admin = StoreAdmin(ctx.settings)
    try:
        admin.create_repository(*own)
        if reader is not None:
            admin.add_reader(*reader)
    except BackendUnavailable as err:
        deadline(ctx, "the backup store")
        raise NotYet(f"waiting for the backup store: {err.message}", retry_after=2.0) from None


def step_release(ctx: StepContext) -> None:
    """The restore is done: its read-only keys to the source's repository go."""
    if not ctx.params.get("restore_source"):
        return
    with ctx.store.session() as session:
        user = reader_user(_db(session, ctx))
    with contextlib.suppress(PlatformError):
        StoreAdmin(ctx.settings).remove_identity(user)


def step_compute(ctx: StepContext) -> None:
    """Wait for the compute instance (its own operation builds it) to be ACTIVE."""
    with ctx.store.session() as session:
        db = _db(session, ctx)
        status = compute_status(session, db)
        instance = session.get(Instance, db.instance_id) if db.instance_id else None
        message = instance.status_message if instance else ""
    if status is InstanceStatus.ACTIVE:
        return
    if status in (InstanceStatus.BUILD, InstanceStatus.STARTING, InstanceStatus.REBOOT):
        deadline(ctx, "compute instance start", create_wait_limit(ctx.settings))
        raise NotYet("waiting for the compute instance to be ACTIVE", retry_after=0.2)
    raise PlatformError(f"the compute instance is {status}: {message}", code="compute_failed")


def step_claim(ctx: StepContext) -> None:
    """A claimed warm instance: hand it its owner's bundle and initial databases and users,
    sealed and signed with the warm secret (a retry sends the same bundle, which the agent
    takes as done)."""
    warm_id = ctx.params.get("warm")
    if not warm_id:
        return
    box = box_for(ctx.settings)
    with ctx.store.session() as session:
        db = _db(session, ctx)
        warm = session.get_one(WarmInstance, warm_id)
        client = warm_client(session, box, warm)
        bundle = box.decrypt(session.get_one(Instance, db.instance_id).bundle_enc or "")
        secret = box.decrypt(warm.secret_enc)
        todo = pending(box, db)
    initial = get_datastore(db.datastore).initial_for_agent(todo["databases"], todo["users"])
    payload = json.dumps({"bundle": json.loads(bundle), "initial": initial})
    try:
        answer = client.claim(seal(secret, payload.encode()))
    except BackendUnavailable as err:  # rebooting, or its engine restarting
        deadline(ctx, "the claim of the warm instance")
        raise NotYet(f"waiting for the warm instance's agent: {err.message}", 0.5) from None
    if answer.instance_id != db.id:
        raise PlatformError("the warm instance's agent answers for another owner")
    ctx.remember(
        claimed_ready=answer.ready, claimed_initialized=bool(answer.raw.get("initialized"))
    )


# A restore's engine starts once the data is restored and recovered, which for a large
# database takes hours (the guest agent gives it as long before it calls the start failed).
RESTORE_READY_S = 6 * 3600.0

# The agent step asks every AGENT_POLL_S for up to AGENT_WINDOW_S in one go (the engine is
# usually ready within a few tenths of a second of its port opening), then lets the worker go.
AGENT_POLL_S = 0.05
AGENT_WINDOW_S = 3.0


def step_agent(ctx: StepContext) -> None:
    """Wait for the guest agent to report the engine ready."""
    if ctx.params.get("claimed_ready"):
        return
    with ctx.store.session() as session:
        r = reach(session, _db(session, ctx), box_for(ctx.settings))
    client = agent_client(r, timeout=5.0)
    started = time.monotonic()
    while True:
        try:
            health = client.health()
        except BackendUnavailable as err:  # the agent is still starting
            if time.monotonic() - started < AGENT_WINDOW_S:
                time.sleep(AGENT_POLL_S)
                continue
            deadline(ctx, "guest agent start")
            raise NotYet(f"waiting for the guest agent: {err.message}", 0.5) from None
        if health.ready:
            return
        restoring = bool(ctx.params.get("restore_source"))
        if health.engine == "failed":
            if not restoring:
                raise PlatformError(
                    f"the engine failed to start: {health.detail}", code="engine_failed"
                )
            # A restore's recovery may stop short (the WAL up to its target still on its way
            # to the repository): the agent starts it again; within the ready timeout of
            # the step's start, else it fails with what the engine last said.
            limit = ctx.settings.ready_timeout_seconds
            if ctx.elapsed() > limit:
                raise PlatformError(
                    f"the restored engine failed to start (tried for {limit:.0f}s): "
                    f"{health.detail}",
                    code="engine_failed",
                )
            raise NotYet(f"engine failed, the agent starts it again: {health.detail}", 2.0)
        if time.monotonic() - started >= AGENT_WINDOW_S:
            deadline(ctx, "engine start", RESTORE_READY_S if restoring else None)
            raise NotYet(f"engine {health.engine}: {health.detail}", 0.5)
        time.sleep(AGENT_POLL_S)


def step_initialize(ctx: StepContext) -> None:
    """Create the initial databases and users; idempotent, then forget the passwords."""
    box = box_for(ctx.settings)
    with ctx.store.session() as session:
        db = _db(session, ctx)
        r = reach(session, db, box)
        todo = pending(box, db)
    # A claimed warm instance's agent made them already (see step_claim).
    if (todo["databases"] or todo["users"]) and not ctx.params.get("claimed_initialized"):
        r.datastore.initialize(r.engine, todo["databases"], todo["users"])
    with ctx.transaction() as session:
        session.get_one(DbInstance, ctx.resource_id).pending_enc = None


def step_endpoint(ctx: StepContext) -> None:
    """The database's stable endpoints lead to its primary (the endpoint proxy)."""
    with ctx.transaction() as session:
        for m in live_members(session, _db(session, ctx).id):
            if m.role == PRIMARY:
                MEMBERS.move(session, m, MemberStatus.ACTIVE, "the primary")
    sync_proxy(ctx.store, ctx.settings)


def step_replicas(ctx: StepContext) -> None:
    """A create with ``--replicas N``: its replicas, made once the primary serves, ready
    before the create ends."""
    count = int(ctx.params.get("replicas") or 0)
    if not count:
        return
    ids = replicas.add_members(
        ctx.store, ctx.settings, ctx.resource_id, count, ctx.params.get("replica_flavor")
    )
    with ctx.store.session() as session:
        members = [session.get_one(DbMember, i) for i in ids]
    failed = [m for m in members if m.status == MemberStatus.ERROR.value]
    if failed:
        raise PlatformError(
            f"replica {failed[0].name} failed: {failed[0].status_message}", code="replica_failed"
        )
    building = [m.name for m in members if m.status != MemberStatus.ACTIVE.value]
    if building:
        deadline(ctx, "the replicas", ctx.settings.ready_timeout_seconds * 4)
        raise NotYet(f"waiting for the replicas: {', '.join(building)}", retry_after=1.0)


def _become(status: DbStatus, health: Health | None = None) -> StepFn:
    def step(ctx: StepContext) -> None:
        with ctx.transaction() as session:
            db = _db(session, ctx)
            DATABASES.move(session, db, status)
            if health is not None:
                db.health, db.health_message, db.health_checked_at = health.value, "", utcnow()
            if status is DbStatus.DELETED:
                # Its endpoints' ports are free again; its members are gone with it.
                db.rw_port = db.ro_port = None
                for m in live_members(session, db.id):
                    drop_member(session, m, "deleted with the database")
        if status is DbStatus.DELETED:
            sync_proxy(ctx.store, ctx.settings)
        if ctx.params.get("warm"):
            WARM_WANTED.set()  # the claim is done: the keeper may make the next one

    return step


# -- delete ------------------------------------------------------------------------------------
def step_archive_last(ctx: StepContext) -> None:
    """Archive what the instance wrote last, so that its recovery window (kept after it is
    gone) ends at its delete; best effort: an instance that does not answer keeps the end
    last known. A restore's read-only keys go too."""
    with ctx.store.session() as session:
        db = load_db(session, ctx)
        user = reader_user(db)
    archive_now(ctx.store, ctx.settings, ctx.resource_id)
    with contextlib.suppress(PlatformError):
        StoreAdmin(ctx.settings).remove_identity(user)


def step_delete_compute(ctx: StepContext) -> None:
    """Delete the compute instances of every member (data volumes included) and wait until
    they are gone."""
    with ctx.transaction() as session:
        db = _db(session, ctx)
        ids = {m.instance_id for m in live_members(session, db.id)}
        if db.instance_id:
            ids.add(db.instance_id)
        left = False
        for instance_id in sorted(ids):
            instance = session.get(Instance, instance_id)
            if instance is None or instance.status == InstanceStatus.DELETED.value:
                continue
            # (Re)asks for the delete: a compute delete that failed left the instance in
            # ERROR, and asking again retries it, until this step's deadline.
            request_delete(session, instance, db.project_id)
            left = True
    if not left:
        return
    deadline(ctx, "compute instance delete")
    raise NotYet("waiting for the compute instances to be deleted", retry_after=0.5)


# -- restart -----------------------------------------------------------------------------------
def step_restart_compute(ctx: StepContext) -> None:
    """Make sure the compute runs: when its agent does not answer (or the compute is down
    or failed), repair the compute instance and wait for it; an engine restart is not
    needed after that (the engine has just started)."""
    repair_id = ctx.params.get("repair")
    with ctx.store.session() as session:
        db = _db(session, ctx)
        instance = session.get_one(Instance, db.instance_id)
        status, message = InstanceStatus(instance.status), instance.status_message
        if repair_id is None and status is InstanceStatus.ACTIVE:
            r = reach(session, db, box_for(ctx.settings))
    if repair_id is None:
        if status is InstanceStatus.ACTIVE and _agent_answers(r):
            return
        why = "restart requested: the guest agent does not answer"
        repair_id = request_repair(ctx.store, instance.id, why, RECOVERABLE)
        if repair_id is None:
            raise PlatformError(
                f"the compute instance is {status}: {message}", code="invalid_state"
            )
        ctx.remember(repair=repair_id)
    _wait_for_repair(ctx, repair_id)


def _open_repair(ctx: StepContext, instance_id: str) -> str | None:
    """The repair the reconciler already started on the instance, if one runs."""
    with ctx.store.session() as session:
        return session.scalars(
            select(Operation.id).where(
                Operation.resource_id == instance_id,
                Operation.kind == INSTANCE_REPAIR.name,
                Operation.status.in_(OPEN),
            )
        ).first()


def _agent_answers(r: Reach) -> bool:
    try:
        agent_client(r, timeout=5.0).health()
    except BackendUnavailable:
        return False
    return True


def _wait_for_repair(ctx: StepContext, repair_id: str) -> None:
    with ctx.store.session() as session:
        op = session.get_one(Operation, repair_id)
        status, error = op.status, op.error_message
    if status == "SUCCEEDED":
        return
    if status == "FAILED":
        raise PlatformError(f"the compute could not be repaired: {error}", code="compute_failed")
    deadline(ctx, "the repair of the compute", ctx.settings.ready_timeout_seconds * 2)
    raise NotYet(f"repairing the compute ({repair_id[:8]})", retry_after=1.0)


def step_restart(ctx: StepContext) -> None:
    """Restart the engine through the agent (not after a repair: it has just started).
    When a configuration value waits for a restart, the replicas restart first (a standby
    needs settings such as max_connections at least as high as its primary's)."""
    if ctx.params.get("repair"):
        return
    box = box_for(ctx.settings)
    with ctx.store.session() as session:
        db = _db(session, ctx)
        r = reach(session, db, box)
        replicas_first = (
            [
                reach(session, db, box, instance_id=m.instance_id)
                for m in live_members(session, db.id)
                if m.role != PRIMARY and m.status == MemberStatus.ACTIVE
            ]
            if db.restart_required
            else []
        )
    for replica in replicas_first:
        agent_client(replica, timeout=ctx.settings.ready_timeout_seconds).restart_engine()
    agent_client(r, timeout=ctx.settings.ready_timeout_seconds).restart_engine()


def step_restarted(ctx: StepContext) -> None:
    """The engine has started with every configuration value: none waits any more."""
    with ctx.store.session() as session:
        _db(session, ctx).restart_required = False


def _kind(name: str, intent: Intent, *steps: tuple[str, StepFn]) -> OperationKind:
    return define(name, "db_instance", intent, *steps, on_failure=fail_resource(DATABASES, load_db))


DB_CREATE = _kind(
    "db.create",
    Intent.CREATE,
    ("repository", step_repository),
    ("compute", step_compute),
    ("claim", step_claim),
    ("agent", step_agent),
    ("initialize", step_initialize),
    ("release", step_release),
    ("endpoint", step_endpoint),
    ("replicas", step_replicas),
    ("finish", _become(DbStatus.ACTIVE, Health.HEALTHY)),
)
DB_DELETE = _kind(
    "db.delete",
    Intent.DELETE,
    ("wait_others", wait_for_others),
    ("archive", step_archive_last),
    ("compute", step_delete_compute),
    ("finish", _become(DbStatus.DELETED)),
)


def _detach_failed(session: Session, ctx: StepContext, err: PlatformError) -> None:
    fail_resource(DATABASES, load_db)(session, ctx, err)
    replicas.detach_failed(session, ctx, err)


# A replica detached into a database of its own (the resource: the new database).
DB_DETACH = define(
    "db.detach",
    "db_instance",
    Intent.CREATE,
    ("repository", step_repository),
    ("detach", replicas.step_detach),
    ("adopt", replicas.step_adopt),
    ("endpoint", step_endpoint),
    ("finish", _become(DbStatus.ACTIVE, Health.HEALTHY)),
    on_failure=_detach_failed,
)
DB_RESTART = _kind(
    "db.restart",
    Intent.ACTION,
    ("compute", step_restart_compute),
    ("restart", step_restart),
    ("agent", step_agent),
    ("configuration", step_restarted),
    ("finish", _become(DbStatus.ACTIVE, Health.HEALTHY)),
)
