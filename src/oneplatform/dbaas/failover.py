"""Automatic failover: a group's primary that does not answer is fenced, its most advanced
replica promoted, the endpoint repointed, and the group's size restored.

The control plane decides (as CloudNativePG's operator and RDS do; no agent votes). A
watcher asks every group's primary each ONEP_FAILOVER_CHECK_SECONDS; one whose agent and
engine both stay silent for ONEP_FAILOVER_GRACE_SECONDS is failed over, in this order,
each step only after the one before succeeded:

1. **cut**: the read-write endpoint refuses and closes its connections;
2. **fence**: the primary's compute is powered off through the compute API — container
   killed, domain destroyed, node powered off at its BMC — and kept off (a compute that
   cannot be reached to fence is not failed over: it may still run, and two writable
   primaries are worse than a pause);
3. **promote**: the replica that received the most WAL;
4. **route**: the endpoint leads to it;
5. **replace**: the former primary's compute is deleted (it never serves again) and a new
   replica on its flavor restores the group's size.

While a group has a ready replica, the reconciler does not repair its primary (a restart
would race the failover): the hold below.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneplatform.compute.instances import fence, request_delete
from oneplatform.compute.reconciler import register_hold
from oneplatform.compute.states import InstanceStatus
from oneplatform.config import Settings
from oneplatform.dbaas.datastores import get_datastore
from oneplatform.dbaas.datastores.features import Feature
from oneplatform.dbaas.endpoints import PRIMARY, REPLICA, drop_member, live_members, sync_proxy
from oneplatform.dbaas.reach import agent_client, reach
from oneplatform.dbaas.replicas import add_members, compute_credit
from oneplatform.dbaas.states import DATABASES, MEMBERS, DbStatus, Health, MemberStatus
from oneplatform.errors import BackendUnavailable, NotYet, PlatformError
from oneplatform.hostsvc.proxy import EndpointProxy, ProxyError
from oneplatform.ops.engine import StepContext, enqueue
from oneplatform.ops.kinds import Intent
from oneplatform.ops.steps import deadline, define
from oneplatform.secrets import box_for
from oneplatform.store.db import Store
from oneplatform.store.models import DbInstance, DbMember, Event, Flavor, Instance, utcnow

log = logging.getLogger(__name__)


# -- the hold: a group's primary is failed over, not repaired ------------------------------------
def _hold(session: Session, instance_id: str) -> str | None:
    member = session.scalars(
        select(DbMember).where(DbMember.instance_id == instance_id, DbMember.deleted_at.is_(None))
    ).first()
    if member is None or member.role != PRIMARY:
        return None
    if not _fails_over(session.get_one(DbInstance, member.db_id)):
        return None
    ready = [
        m
        for m in live_members(session, member.db_id)
        if m.role == REPLICA and m.status == MemberStatus.ACTIVE.value
    ]
    return "its database fails over to a replica instead" if ready else None


register_hold(_hold)


def _fails_over(db: DbInstance) -> bool:
    """Whether the database's datastore supports automatic failover."""
    return Feature.FAILOVER not in get_datastore(db.datastore).lacks(db.version)


# -- the watcher --------------------------------------------------------------------------------
def _groups(store: Store) -> list[str]:
    """ACTIVE databases with a ready replica (the ones a failover can help) whose datastore
    fails over."""
    with store.session() as session:
        ids = []
        for db in session.scalars(
            select(DbInstance).where(
                DbInstance.deleted_at.is_(None), DbInstance.status == DbStatus.ACTIVE.value
            )
        ):
            if not _fails_over(db):
                continue
            members = live_members(session, db.id)
            if any(m.role == REPLICA and m.status == MemberStatus.ACTIVE.value for m in members):
                ids.append(db.id)
        return ids


def primary_answers(store: Store, settings: Settings, db_id: str) -> tuple[bool, str]:
    """Whether the primary's agent or its engine answers; what was heard, if not."""
    with store.session() as session:
        db = session.get_one(DbInstance, db_id)
        instance = session.get(Instance, db.instance_id) if db.instance_id else None
        if instance is None or instance.status != InstanceStatus.ACTIVE.value:
            return True, ""  # being repaired, stopped or gone: not the watcher's business
        r = reach(session, db, box_for(settings))
    try:
        agent_client(r, timeout=2.0).health()
        return True, ""
    except PlatformError as err:
        agent = err.message
    try:
        r.datastore.ping(r.engine, timeout=2.0)
        return True, ""
    except PlatformError as err:
        return False, f"agent: {agent}; engine: {err.message}"


def watch_once(store: Store, settings: Settings, down: dict[str, float]) -> list[str]:
    """One look at every group's primary; starts the failovers that are due (their ids).
    ``down``: since when each silent primary has been silent (kept between looks)."""
    ids = _groups(store)
    for gone in set(down) - set(ids):
        down.pop(gone)
    if not ids:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(ids))) as pool:
        answers = list(pool.map(lambda i: primary_answers(store, settings, i), ids))
    started = []
    now = time.monotonic()
    for db_id, (alive, why) in zip(ids, answers, strict=True):
        if alive:
            down.pop(db_id, None)
            continue
        since = down.setdefault(db_id, now)
        if now - since >= settings.failover_grace_seconds:
            op = start_failover(store, db_id, f"no answer for {now - since:.1f} s ({why})")
            if op is not None:
                started.append(op)
            down.pop(db_id, None)
    return started


def start_failover(store: Store, db_id: str, why: str) -> str | None:
    with store.session() as session:
        db = session.get_one(DbInstance, db_id)
        if db.status != DbStatus.ACTIVE.value:
            return None
        DATABASES.move(session, db, DbStatus.FAILOVER, f"its primary does not answer: {why}")
        log.warning("database instance %s: failing over: %s", db.name, why)
        return enqueue(session, DB_FAILOVER, db.id, db.project_id, {"reason": why}).id


def run_failover_watcher(store: Store, settings: Settings, stop: threading.Event) -> None:
    down: dict[str, float] = {}
    while not stop.wait(settings.failover_check_seconds):
        try:
            watch_once(store, settings, down)
        except Exception:  # the loop must outlive a broken store connection
            log.exception("failover watch round failed")


# -- the operation ------------------------------------------------------------------------------
def _primary(session: Session, db_id: str) -> DbMember:
    return session.scalars(
        select(DbMember).where(
            DbMember.db_id == db_id, DbMember.deleted_at.is_(None), DbMember.role == PRIMARY
        )
    ).one()


def step_fence(ctx: StepContext) -> None:
    """Cut the endpoint, then power the primary off through its compute API."""
    if ctx.params.get("fenced"):
        return
    with ctx.store.session() as session:
        db = session.get_one(DbInstance, ctx.resource_id)
        primary = _primary(session, db.id)
        name, instance_id = primary.name, primary.instance_id
    with contextlib.suppress(ProxyError):
        EndpointProxy(ctx.settings).pause(ctx.resource_id)
    ctx.progress(f"fencing {name}")
    started = time.monotonic()
    try:
        fence(ctx.store, ctx.settings, instance_id, "its database failed over")
    except PlatformError as err:
        deadline(ctx, f"fencing {name}", 300)
        raise NotYet(f"cannot fence {name} yet ({err.message}): no promotion", 2.0) from None
    ctx.remember(fenced=True, fence_seconds=round(time.monotonic() - started, 2))


def _position(status: dict[str, Any]) -> int:
    return max(status.get("receive_bytes") or 0, status.get("replay_bytes") or 0)


def step_promote(ctx: StepContext) -> None:
    """Promote the replica that received the most WAL; the endpoint leads to it."""
    box = box_for(ctx.settings)
    with ctx.store.session() as session:
        db = session.get_one(DbInstance, ctx.resource_id)
        old = _primary(session, db.id)
        candidates = [
            (m.id, m.name, agent_client(reach(session, db, box, instance_id=m.instance_id), 5.0))
            for m in live_members(session, db.id)
            if m.role == REPLICA and m.status == MemberStatus.ACTIVE.value
        ]
    heard: list[tuple[int, str, str, Any]] = []
    for member_id, name, client in candidates:
        try:
            status = client.replication()
        except BackendUnavailable as err:
            log.warning("failover of %s: replica %s does not answer: %s", db.id, name, err.message)
            continue
        if status.get("role") == "primary":  # promoted by an earlier try of this step
            heard = [(1 << 62, member_id, name, client)]
            break
        heard.append((_position(status), member_id, name, client))
    if not heard:
        deadline(ctx, "a replica that answers", 120)
        raise NotYet("no replica answers yet", 2.0)
    _, member_id, name, client = max(heard, key=lambda h: h[0])
    ctx.progress(f"promoting {name}")
    client.promote()
    with ctx.transaction() as session:
        db = session.get_one(DbInstance, ctx.resource_id)
        new = session.get_one(DbMember, member_id)
        former = session.get_one(DbMember, old.id)
        instance = session.get_one(Instance, new.instance_id)
        former.role, new.role = REPLICA, PRIMARY
        MEMBERS.move(session, former, MemberStatus.ERROR, "fenced: its database failed over")
        db.instance_id, db.flavor_id = new.instance_id, instance.flavor_id
        db.health, db.health_message, db.health_checked_at = Health.HEALTHY.value, "", utcnow()
        session.add(
            Event(
                resource_type="db_instance",
                resource_id=db.id,
                from_status=db.status,
                to_status=db.status,
                message=f"failover: {former.name} fenced through its compute API "
                f"({ctx.params.get('fence_seconds')} s) after {ctx.params.get('reason')}; "
                f"{new.name} promoted (the most advanced of {len(heard)} replica(s) heard)",
            )
        )
    sync_proxy(ctx.store, ctx.settings, force=[ctx.resource_id])
    ctx.remember(former=old.id, promoted=member_id)


def step_replace(ctx: StepContext) -> None:
    """The former primary never serves again: its compute goes; a new replica on its
    flavor restores the group's size (its own operation)."""
    with ctx.transaction() as session:
        former = session.get_one(DbMember, ctx.params["former"])
        instance = session.get_one(Instance, former.instance_id)
        flavor = session.get_one(Flavor, instance.flavor_id).name
        credit = compute_credit(instance)  # on its way out: the replacement takes its place
        size = len([m for m in live_members(session, former.db_id) if m.role == REPLICA])
        if former.deleted_at is None:
            request_delete(session, instance, former.project_id)
            drop_member(session, former, "discarded after the failover")
    if not ctx.params.get("replaced"):
        # ``size`` counted the former primary: as many replicas as before the failure.
        with contextlib.suppress(PlatformError):
            add_members(ctx.store, ctx.settings, ctx.resource_id, size, flavor, credit)
        ctx.remember(replaced=True)


def _finish(ctx: StepContext) -> None:
    with ctx.transaction() as session:
        db = session.get_one(DbInstance, ctx.resource_id)
        DATABASES.move(session, db, DbStatus.ACTIVE, "")


def _failed(session: Session, ctx: StepContext, err: PlatformError) -> None:
    db = session.get_one(DbInstance, ctx.resource_id)
    if db.status != DbStatus.FAILOVER.value:
        return
    DATABASES.move(
        session, db, DbStatus.ERROR, f"failover failed at {ctx.step_name}: {err.message}"
    )


DB_FAILOVER = define(
    "db.failover",
    "db_instance",
    Intent.ACTION,
    ("fence", step_fence),
    ("promote", step_promote),
    ("replace", step_replace),
    ("finish", _finish),
    on_failure=_failed,
)
