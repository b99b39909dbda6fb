"""The health checker: refreshes each database instance's engine health from its agent."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select

from oneplatform.compute.states import InstanceStatus
from oneplatform.config import Settings
from oneplatform.dbaas.reach import agent_client, compute_status, reach
from oneplatform.dbaas.states import DbStatus, Health
from oneplatform.errors import PlatformError
from oneplatform.secrets import box_for
from oneplatform.store.db import Store
from oneplatform.store.models import DbInstance, utcnow

log = logging.getLogger(__name__)
ENGINE_HEALTH = {
    "running": Health.HEALTHY,
    "starting": Health.STARTING,
    "stopped": Health.SHUTDOWN,
    "failed": Health.FAILED,
}


def probe(store: Store, settings: Settings, db_id: str) -> tuple[Health, str]:
    """Ask the agent; map what it says (or its silence) to a Health."""
    with store.session() as session:
        db = session.get_one(DbInstance, db_id)
        status = compute_status(session, db)
        if status in (InstanceStatus.SHUTOFF, InstanceStatus.STOPPING):
            return Health.SHUTDOWN, "the compute instance is stopped"
        try:
            r = reach(session, db, box_for(settings))
        except PlatformError as err:
            return Health.UNKNOWN, err.message
    try:
        answer = agent_client(r, timeout=3.0).health()
    except PlatformError as err:
        return Health.UNKNOWN, f"agent did not answer: {err.message}"
    health = ENGINE_HEALTH.get(answer.engine, Health.UNKNOWN)
    if health is Health.HEALTHY and not answer.ready:
        health = Health.STARTING
    return health, answer.detail[:500]


def check_once(store: Store, settings: Settings) -> int:
    """Refresh the health of every ACTIVE or ERROR database instance; returns how many."""
    with store.session() as session:
        ids = list(
            session.scalars(
                select(DbInstance.id).where(
                    DbInstance.deleted_at.is_(None),
                    DbInstance.status.in_([DbStatus.ACTIVE.value, DbStatus.ERROR.value]),
                )
            )
        )
    if not ids:
        return 0
    with ThreadPoolExecutor(max_workers=min(8, len(ids))) as pool:
        results = list(pool.map(lambda i: (i, probe(store, settings, i)), ids))
    with store.session() as session:
        for db_id, (health, message) in results:
            db = session.get_one(DbInstance, db_id)
            if db.health != health.value:
                log.info("database instance %s health %s -> %s", db.name, db.health, health)
            db.health, db.health_message, db.health_checked_at = health.value, message, utcnow()
    return len(ids)


def run_health_checker(store: Store, settings: Settings, stop: threading.Event) -> None:
    while not stop.wait(settings.health_interval_seconds):
        try:
            check_once(store, settings)
        except Exception:
            log.exception("health check round failed")
