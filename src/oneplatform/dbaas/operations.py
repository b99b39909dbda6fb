"""Operation kinds of the database service. Nothing here knows the compute type."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from sqlalchemy.orm import Session

from oneplatform.compute.instances import request_delete
from oneplatform.compute.states import InstanceStatus
from oneplatform.dbaas.reach import agent_client, compute_status, reach
from oneplatform.dbaas.states import DATABASES, DbStatus, Health
from oneplatform.errors import AlreadyExists, BackendUnavailable, NotYet, PlatformError
from oneplatform.ops.engine import StepContext
from oneplatform.ops.kinds import Intent, OperationKind, StepFn
from oneplatform.ops.steps import (
    check_not_superseded,
    deadline,
    define,
    fail_resource,
    wait_for_others,
)
from oneplatform.secrets import SecretBox, box_for
from oneplatform.store.models import DbInstance, Instance, utcnow


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
        deadline(ctx, "compute instance start")
        raise NotYet("waiting for the compute instance to be ACTIVE", retry_after=0.2)
    raise PlatformError(f"the compute instance is {status}: {message}", code="compute_failed")


def step_agent(ctx: StepContext) -> None:
    """Wait for the guest agent to report the engine ready."""
    with ctx.store.session() as session:
        r = reach(session, _db(session, ctx), box_for(ctx.settings))
    try:
        health = agent_client(r, timeout=5.0).health()
    except BackendUnavailable as err:  # the agent is still starting
        deadline(ctx, "guest agent start")
        raise NotYet(f"waiting for the guest agent: {err.message}", 0.5) from None
    if health.ready:
        return
    if health.engine == "failed":
        raise PlatformError(f"the engine failed to start: {health.detail}", code="engine_failed")
    deadline(ctx, "engine start")
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
            DATABASES.move(session, db, status)
            if health is not None:
                db.health, db.health_message, db.health_checked_at = health.value, "", utcnow()

    return step


# -- delete ------------------------------------------------------------------------------------


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
    deadline(ctx, "compute instance delete")
    raise NotYet("waiting for the compute instance to be deleted", retry_after=0.5)


# -- restart -----------------------------------------------------------------------------------
def step_restart(ctx: StepContext) -> None:
    with ctx.store.session() as session:
        r = reach(session, _db(session, ctx), box_for(ctx.settings))
    agent_client(r, timeout=ctx.settings.ready_timeout_seconds).restart_engine()


def _kind(name: str, intent: Intent, *steps: tuple[str, StepFn]) -> OperationKind:
    return define(name, "db_instance", intent, *steps, on_failure=fail_resource(DATABASES, load_db))


DB_CREATE = _kind(
    "db.create",
    Intent.CREATE,
    ("compute", step_compute),
    ("agent", step_agent),
    ("initialize", step_initialize),
    ("finish", _become(DbStatus.ACTIVE, Health.HEALTHY)),
)
DB_DELETE = _kind(
    "db.delete",
    Intent.DELETE,
    ("wait_others", wait_for_others),
    ("compute", step_delete_compute),
    ("finish", _become(DbStatus.DELETED)),
)
DB_RESTART = _kind(
    "db.restart",
    Intent.ACTION,
    ("restart", step_restart),
    ("agent", step_agent),
    ("finish", _become(DbStatus.ACTIVE, Health.HEALTHY)),
)
