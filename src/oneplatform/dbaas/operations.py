"""Operation kinds of the database service. Nothing here knows the compute type."""

from __future__ import annotations

import contextlib

from sqlalchemy.orm import Session

from oneplatform.compute.service import request_delete
from oneplatform.compute.states import InstanceStatus
from oneplatform.dbaas.common import agent_client, compute_status, pending, reach
from oneplatform.dbaas.states import DbStatus, Health, set_db_status
from oneplatform.errors import AlreadyExists, BackendUnavailable, NotYet, PlatformError
from oneplatform.ops.engine import StepContext, wait_for_other_operations
from oneplatform.ops.model import OperationKind, StepFn, register
from oneplatform.secrets import box_for
from oneplatform.store.models import DbInstance, Instance, utcnow


def _db(session: Session, ctx: StepContext) -> DbInstance:
    db = session.get_one(DbInstance, ctx.resource_id)
    if db.status == DbStatus.DELETING.value and ctx.kind != DB_DELETE.name:
        raise PlatformError(
            f"database instance {db.name!r} is being deleted: {ctx.kind} stops here",
            code="superseded",
        )
    return db


def _deadline(ctx: StepContext, what: str) -> None:
    if ctx.elapsed() > ctx.settings.ready_timeout_seconds:
        raise PlatformError(
            f"{what} did not happen within {ctx.settings.ready_timeout_seconds:.0f}s",
            code="timeout",
        )


# -- create ------------------------------------------------------------------------------------
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
        _deadline(ctx, "compute instance start")
        raise NotYet("waiting for the compute instance to be ACTIVE", retry_after=0.2)
    raise PlatformError(f"the compute instance is {status}: {message}", code="compute_failed")


def step_agent(ctx: StepContext) -> None:
    """Wait for the guest agent to report the engine ready."""
    with ctx.store.session() as session:
        r = reach(session, _db(session, ctx), box_for(ctx.settings))
    try:
        health = agent_client(r, timeout=5.0).health()
    except BackendUnavailable as err:  # the agent is still starting
        _deadline(ctx, "guest agent start")
        raise NotYet(f"waiting for the guest agent: {err.message}", 0.5) from None
    if health.ready:
        return
    if health.engine == "failed":
        raise PlatformError(f"the engine failed to start: {health.detail}", code="engine_failed")
    _deadline(ctx, "engine start")
    raise NotYet(f"engine {health.engine}: {health.detail}", 0.5)


def step_initialize(ctx: StepContext) -> None:
    """Create the initial databases and users; idempotent, then forget the passwords."""
    box = box_for(ctx.settings)
    with ctx.store.session() as session:
        db = _db(session, ctx)
        r = reach(session, db, box)
        todo = pending(box, db)
    ds = r.datastore
    for name in todo["databases"]:
        with contextlib.suppress(AlreadyExists):
            ds.create_database(r.engine, name)
    for user in todo["users"]:
        try:
            ds.create_user(r.engine, user["name"], user["password"])
        except AlreadyExists:
            ds.set_password(r.engine, user["name"], user["password"])
        for database in user["databases"]:
            ds.grant(r.engine, user["name"], database)
    with ctx.transaction() as session:
        session.get_one(DbInstance, ctx.resource_id).pending_enc = None


def _become(status: DbStatus, health: Health | None = None) -> StepFn:
    def step(ctx: StepContext) -> None:
        with ctx.transaction() as session:
            db = _db(session, ctx)
            set_db_status(session, db, status)
            if health is not None:
                db.health, db.health_message, db.health_checked_at = health.value, "", utcnow()

    return step


# -- delete ------------------------------------------------------------------------------------
def step_wait_others(ctx: StepContext) -> None:
    wait_for_other_operations(ctx, ctx.settings.ready_timeout_seconds)


def step_delete_compute(ctx: StepContext) -> None:
    """Delete the compute instance (data volume included) and wait until it is gone."""
    with ctx.transaction() as session:
        db = _db(session, ctx)
        instance = session.get(Instance, db.instance_id) if db.instance_id else None
        if instance is None or instance.status == InstanceStatus.DELETED.value:
            return
        # (Re)asks for the delete: a compute delete that failed left the instance in ERROR,
        # and asking again retries it, until this step's deadline.
        request_delete(session, instance, db.project_id)
    _deadline(ctx, "compute instance delete")
    raise NotYet("waiting for the compute instance to be deleted", retry_after=0.5)


# -- restart -----------------------------------------------------------------------------------
def step_restart(ctx: StepContext) -> None:
    with ctx.store.session() as session:
        r = reach(session, _db(session, ctx), box_for(ctx.settings))
    agent_client(r, timeout=ctx.settings.ready_timeout_seconds).restart_engine()


def _on_failure(session: Session, ctx: StepContext, err: PlatformError) -> None:
    db = session.get_one(DbInstance, ctx.resource_id)
    if db.status == DbStatus.DELETED.value:
        return
    if db.status == DbStatus.DELETING.value and ctx.kind != DB_DELETE.name:
        return  # superseded by the delete
    set_db_status(session, db, DbStatus.ERROR, f"{ctx.step_name}: {err.message}")


def _kind(name: str, *steps: tuple[str, StepFn]) -> OperationKind:
    return register(
        OperationKind(name=name, resource_type="db_instance", steps=steps, on_failure=_on_failure)
    )


DB_CREATE = _kind(
    "db.create",
    ("compute", step_compute),
    ("agent", step_agent),
    ("initialize", step_initialize),
    ("finish", _become(DbStatus.ACTIVE, Health.HEALTHY)),
)
DB_DELETE = _kind(
    "db.delete",
    ("wait_others", step_wait_others),
    ("compute", step_delete_compute),
    ("finish", _become(DbStatus.DELETED)),
)
DB_RESTART = _kind(
    "db.restart",
    ("restart", step_restart),
    ("agent", step_agent),
    ("finish", _become(DbStatus.ACTIVE, Health.HEALTHY)),
)
