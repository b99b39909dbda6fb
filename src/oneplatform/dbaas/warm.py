"""Warm capacity: database instances made ahead of any request, handed to their owner at
create time.

An operator keeps ``target`` instances ready per flavor, datastore version and data volume
size (``onep warm set``). A warm instance is an ordinary compute instance of the platform's
internal project :data:`WARM_PROJECT` (no token belongs to it, so no tenant sees it), on a
network of its own, booted with a *warm* bundle: its engine is initialized and running, no
role exists, and its agent answers only its health and one claim, both under a secret made
for that instance alone. It counts against the hosts' capacity like any instance.

A ``db create`` whose flavor, version and size match a ready one claims it in the create's
own transaction (a conditional update: two creates never get the same one): the instance
moves to the tenant's project with the owner's fresh bundle (new agent secret, new admin and
platform passwords), and the create's ``claim`` step hands that bundle to the agent, sealed
and signed with the warm secret (:mod:`oneplatform.guest.sealing`). The agent keeps it on
the data disk and makes the roles; from then on only the owner's secret opens it. Without a
ready one, the create is a normal (cold) one. A claimed instance is its owner's until it is
deleted: it is never warm again.

The keeper (:func:`run_warm_keeper`, in every ``onep up``) marks instances READY once their
agent reports the engine ready, replaces what was claimed (once that create is done: a boot
beside a claim would slow the claim) or failed, and deletes what is above target
(``--count 0`` drains). When capacity runs out it records why and tries again later.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import threading

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from oneplatform.compute.catalog import flavor_by_name
from oneplatform.compute.drivers.base import VolumeSpec
from oneplatform.compute.instances import endpoints, place_instance, request_delete
from oneplatform.compute.states import InstanceStatus
from oneplatform.config import Settings
from oneplatform.dbaas.agent_client import AgentClient
from oneplatform.dbaas.datastores import get_datastore, get_version
from oneplatform.dbaas.reach import AGENT_ENDPOINT, DATA_PATH, DATA_VOLUME, make_bundle
from oneplatform.dbaas.states import DbStatus
from oneplatform.errors import PlatformError
from oneplatform.guest.bundle import AdminCredentials
from oneplatform.iam import Caller
from oneplatform.images.recipes import load_recipe
from oneplatform.schemas.warm import WarmPoolOut, WarmSet
from oneplatform.secrets import SecretBox, box_for, generate_password, generate_token
from oneplatform.store.db import Store
from oneplatform.store.models import (
    DbInstance,
    Flavor,
    Instance,
    Project,
    WarmInstance,
    WarmPool,
    new_id,
    utcnow,
)

log = logging.getLogger(__name__)

WARM_PROJECT = "_warm"  # not a valid project name: nobody can create it or hold its token
MANAGED_BY_WARM = "warm"
RETRY_AFTER = dt.timedelta(seconds=30)  # after a failed attempt to add one
# Woken by `warm set` and by the end of a claiming create, so the keeper acts at once.
WARM_WANTED = threading.Event()


class WarmStatus(enum.StrEnum):
    BUILDING = "BUILDING"
    READY = "READY"
    CLAIMED = "CLAIMED"
    DELETING = "DELETING"
    DELETED = "DELETED"


LIVE = (WarmStatus.BUILDING.value, WarmStatus.READY.value)


# -- the API (admin) ---------------------------------------------------------------------------
def set_warm(store: Store, caller: Caller, req: WarmSet) -> WarmPoolOut:
    """Keep ``count`` ready instances of the flavor and version (0 drains them)."""
    caller.require_admin()
    datastore = get_datastore(req.datastore)
    version = get_version(datastore, req.version)
    with store.session() as session:
        flavor = flavor_by_name(session, req.flavor)
        pool = session.scalars(
            select(WarmPool).where(
                WarmPool.flavor_id == flavor.id,
                WarmPool.datastore == datastore.name,
                WarmPool.version == version.version,
            )
        ).first()
        if pool is None:
            pool = WarmPool(
                id=new_id(),
                flavor_id=flavor.id,
                datastore=datastore.name,
                version=version.version,
                message="",
            )
            session.add(pool)
        elif pool.size_gb != req.size_gb:
            # The ones made for the old size cannot serve the new one: replace them.
            _drain(session, pool, keep=0)
        pool.size_gb, pool.target = req.size_gb, req.count
        pool.message, pool.retry_at = "", None
        session.flush()
        out = _to_out(session, pool)
    WARM_WANTED.set()
    return out


def list_warm(store: Store, caller: Caller) -> list[WarmPoolOut]:
    caller.require_admin()
    with store.session() as session:
        pools = session.scalars(select(WarmPool).order_by(WarmPool.created_at))
        return [_to_out(session, p) for p in pools]


def _to_out(session: Session, pool: WarmPool) -> WarmPoolOut:
    flavor = session.get_one(Flavor, pool.flavor_id)
    counts = dict(
        session.execute(
            select(WarmInstance.status, func.count())
            .where(WarmInstance.pool_id == pool.id)
            .group_by(WarmInstance.status)
        ).all()
    )
    return WarmPoolOut(
        flavor=flavor.name,
        compute_type=flavor.compute_type,
        datastore=pool.datastore,
        version=pool.version,
        size_gb=pool.size_gb,
        target=pool.target,
        ready=counts.get(WarmStatus.READY.value, 0),
        building=counts.get(WarmStatus.BUILDING.value, 0),
        claimed=counts.get(WarmStatus.CLAIMED.value, 0),
        message=pool.message,
        updated_at=pool.updated_at,
    )


# -- claiming -----------------------------------------------------------------------------------
def claim(
    session: Session,
    flavor: Flavor,
    datastore: str,
    version: str,
    size_gb: int,
    db_id: str,
    attempts: int = 3,
) -> tuple[WarmInstance, Instance] | None:
    """Take a ready warm instance for database ``db_id``, in the caller's transaction; None
    when there is none. The conditional update makes a claim exclusive: of two creates that
    pick the same one, the second sees no row changed and picks another."""
    query = (
        select(WarmInstance.id)
        .join(WarmPool, WarmPool.id == WarmInstance.pool_id)
        .join(Instance, Instance.id == WarmInstance.instance_id)
        .where(
            WarmPool.flavor_id == flavor.id,
            WarmPool.datastore == datastore,
            WarmPool.version == version,
            WarmPool.size_gb == size_gb,
            WarmInstance.status == WarmStatus.READY.value,
            Instance.status == InstanceStatus.ACTIVE.value,
        )
        .order_by(WarmInstance.ready_at)
        .limit(1)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=WarmInstance)
    for _ in range(attempts):
        warm_id = session.scalars(query).first()
        if warm_id is None:
            return None
        taken = session.execute(
            update(WarmInstance)
            .where(WarmInstance.id == warm_id, WarmInstance.status == WarmStatus.READY.value)
            .values(status=WarmStatus.CLAIMED.value, claimed_by=db_id, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if taken.rowcount == 1:  # type: ignore[attr-defined]
            warm = session.get_one(WarmInstance, warm_id, populate_existing=True)
            return warm, session.get_one(Instance, warm.instance_id)
    return None


def warm_client(session: Session, box: SecretBox, warm: WarmInstance) -> AgentClient:
    """The agent of a warm instance, under its warm secret."""
    instance = session.get_one(Instance, warm.instance_id)
    agent = {e.name: e for e in endpoints(session, instance)}[AGENT_ENDPOINT]
    return AgentClient(agent.host, agent.port, warm.id, box.decrypt(warm.secret_enc), timeout=5.0)


# -- the keeper ------------------------------------------------------------------------------------
def warm_project_id(session: Session) -> str:
    project = session.scalars(select(Project).where(Project.name == WARM_PROJECT)).first()
    if project is None:
        project = Project(id=new_id(), name=WARM_PROJECT)
        session.add(project)
        session.flush()
    return project.id


def keep_once(store: Store, settings: Settings) -> None:
    """One round: follow the builds and deletes, then bring every pool to its target."""
    box = box_for(settings)
    _follow(store, settings, box)
    with store.session() as session:
        pool_ids = list(session.scalars(select(WarmPool.id)))
    for pool_id in pool_ids:
        try:
            _keep_pool(store, box, pool_id)
        except PlatformError as err:
            with store.session() as session:
                pool = session.get_one(WarmPool, pool_id)
                pool.message, pool.retry_at = err.message, utcnow() + RETRY_AFTER
            log.warning("warm pool %s: %s", pool_id, err.message)


def _follow(store: Store, settings: Settings, box: SecretBox) -> None:
    """BUILDING → READY once the agent says the engine is ready (deleted if its instance
    failed, or its engine was not ready in time); DELETING → DELETED once it is gone."""
    too_old = utcnow() - dt.timedelta(seconds=settings.ready_timeout_seconds * 2)
    with store.session() as session:
        rows = list(
            session.execute(
                select(
                    WarmInstance.id,
                    WarmInstance.status,
                    WarmInstance.created_at,
                    Instance.status,
                    Instance.status_message,
                )
                .join(Instance, Instance.id == WarmInstance.instance_id)
                .where(
                    WarmInstance.status.in_((WarmStatus.BUILDING.value, WarmStatus.DELETING.value))
                )
            ).all()
        )
    for warm_id, status, created_at, compute, message in rows:
        if status == WarmStatus.DELETING.value:
            if compute == InstanceStatus.DELETED.value:
                _set(store, warm_id, WarmStatus.DELETING, WarmStatus.DELETED)
            continue
        why = None
        if compute == InstanceStatus.ERROR.value:
            why = f"its instance failed: {message}"
        elif compute == InstanceStatus.ACTIVE.value and _engine_ready(store, box, warm_id):
            _set(store, warm_id, WarmStatus.BUILDING, WarmStatus.READY, "engine ready")
        elif created_at < too_old:
            why = "its engine was not ready in time"
        if why is not None:
            with store.session() as session:
                warm = session.get_one(WarmInstance, warm_id)
                if warm.status == WarmStatus.BUILDING.value:
                    _delete(session, warm, why)
                    log.warning("warm instance %s deleted: %s", warm_id, why)


def _engine_ready(store: Store, box: SecretBox, warm_id: str) -> bool:
    with store.session() as session:
        client = warm_client(session, box, session.get_one(WarmInstance, warm_id))
    try:
        return client.health().ready
    except PlatformError:
        return False  # still booting


def _set(
    store: Store, warm_id: str, old: WarmStatus, new: WarmStatus, message: str | None = None
) -> None:
    """Move one warm instance from ``old`` to ``new`` (nothing if it is not in ``old``
    any more); the message stays unless one is given."""
    with store.session() as session:
        values: dict[str, object] = {"status": new.value, "updated_at": utcnow()}
        if message is not None:
            values["status_message"] = message
        if new is WarmStatus.READY:
            values["ready_at"] = utcnow()
        session.execute(
            update(WarmInstance)
            .where(WarmInstance.id == warm_id, WarmInstance.status == old.value)
            .values(**values)
            .execution_options(synchronize_session=False)
        )


def _delete(session: Session, warm: WarmInstance, why: str) -> None:
    instance = session.get_one(Instance, warm.instance_id)
    request_delete(session, instance, instance.project_id)
    warm.status, warm.status_message = WarmStatus.DELETING.value, why


def _drain(session: Session, pool: WarmPool, keep: int) -> None:
    """Delete the pool's live warm instances above ``keep``: those still building first."""
    live = list(
        session.scalars(
            select(WarmInstance)
            .where(WarmInstance.pool_id == pool.id, WarmInstance.status.in_(LIVE))
            .order_by(WarmInstance.status.desc(), WarmInstance.created_at)
        )
    )  # the READY ones first (kept), then those BUILDING (deleted first)
    for warm in live[keep:]:
        _delete(session, warm, "above the pool's target")


def _keep_pool(store: Store, box: SecretBox, pool_id: str) -> None:
    """Bring one pool to its target: one instance added per transaction (a refusal keeps
    those already placed), the extra ones deleted."""
    while True:
        with store.session() as session:
            pool = session.get_one(WarmPool, pool_id, with_for_update=store.postgres)
            live = int(
                session.scalar(
                    select(func.count())
                    .select_from(WarmInstance)
                    .where(WarmInstance.pool_id == pool.id, WarmInstance.status.in_(LIVE))
                )
                or 0
            )
            if live > pool.target:
                _drain(session, pool, keep=pool.target)
                return
            if live == pool.target or (pool.retry_at is not None and pool.retry_at > utcnow()):
                return
            if _handing_over(session, pool):
                return  # the next one boots once the claim is done, not beside it
            _add(session, box, pool)
            pool.message, pool.retry_at = "", None


def _handing_over(session: Session, pool: WarmPool) -> bool:
    """Whether a create that claimed one of the pool's instances is still under way."""
    inflight = session.scalar(
        select(func.count())
        .select_from(WarmInstance)
        .join(DbInstance, DbInstance.id == WarmInstance.claimed_by)
        .where(
            WarmInstance.pool_id == pool.id,
            WarmInstance.status == WarmStatus.CLAIMED.value,
            DbInstance.status == DbStatus.BUILD.value,
        )
    )
    return bool(inflight)


def _add(session: Session, box: SecretBox, pool: WarmPool) -> WarmInstance:
    """Place one warm instance of the pool (its create runs as any instance's)."""
    flavor = session.get_one(Flavor, pool.flavor_id)
    datastore = get_datastore(pool.datastore)
    version = get_version(datastore, pool.version)
    warm_id, secret = new_id(), generate_token()
    bundle = make_bundle(
        warm_id,
        datastore,
        version.version,
        flavor.vcpus,
        flavor.ram_mb,
        # Required by the format, never made in the engine (a warm bundle makes no role).
        AdminCredentials(datastore.admin_username, generate_password()),
        None,
        secret,
        load_recipe(version.image).ports,
        warm=True,
    )
    instance, _ = place_instance(
        session,
        warm_project_id(session),
        f"warm-{warm_id[:12]}",
        flavor,
        version.image,
        managed_by=MANAGED_BY_WARM,
        bundle_enc=box.encrypt(bundle),
        volumes=[VolumeSpec(DATA_VOLUME, pool.size_gb, DATA_PATH)],
    )
    instance.network_group = instance.id  # alone on its network, then and once claimed
    warm = WarmInstance(
        id=warm_id,
        pool_id=pool.id,
        instance_id=instance.id,
        status=WarmStatus.BUILDING.value,
        status_message="",
        secret_enc=box.encrypt(secret),
    )
    session.add(warm)
    return warm


def run_warm_keeper(store: Store, settings: Settings, stop: threading.Event) -> None:
    """Keep the pools at target until ``stop``: every ``warm_interval_seconds``, and at
    once when a pool is set or an instance claimed."""
    while not stop.is_set():
        WARM_WANTED.clear()
        try:
            keep_once(store, settings)
        except Exception:  # the loop must outlive a broken store connection
            log.exception("warm keeper round failed")
        WARM_WANTED.wait(settings.warm_interval_seconds)
