"""The health checker: refreshes each database instance's engine health from its agent.

When the agent of an ACTIVE database cannot be reached, the checker asks the compute
reconciler to look at its compute instance at once (not at its next round), so a killed
container or VM is repaired within seconds. While the compute is being repaired the health
reads ``STARTING``; a compute whose repair gave up takes its database to ``ERROR`` with the
reason, from which ``onep db restart`` recovers it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from oneplatform.compute.reconciler import reconcile_once
from oneplatform.compute.states import InstanceStatus
from oneplatform.config import Settings
from oneplatform.dbaas.agent_client import AgentClient
from oneplatform.dbaas.endpoints import REPLICA, live_members
from oneplatform.dbaas.reach import Reach, agent_client, reach
from oneplatform.dbaas.states import DATABASES, DbStatus, Health, MemberStatus
from oneplatform.dbaas.storage import autogrow, record_usage
from oneplatform.errors import PlatformError
from oneplatform.secrets import box_for
from oneplatform.store.db import Store
from oneplatform.store.models import DbInstance, Instance, utcnow

log = logging.getLogger(__name__)
ENGINE_HEALTH = {
    "running": Health.HEALTHY,
    "starting": Health.STARTING,
    "stopped": Health.SHUTDOWN,
    "failed": Health.FAILED,
}


@dataclass(frozen=True)
class Probe:
    db_id: str
    health: Health
    message: str
    compute: InstanceStatus | None = None
    compute_message: str = ""
    unreachable: bool = False  # the agent did not answer: its compute may be down
    archived_until: dt.datetime | None = None  # what its repository holds, when known
    stats: dict[str, Any] | None = None  # the engine's figures and replicas' lag, when read
    storage: dict[str, Any] | None = None  # its data filesystem's usage, when reported
    asked_at: dt.datetime | None = None  # when the agent was asked (what it said is as old)


def probe(store: Store, settings: Settings, db_id: str) -> Probe:
    """Ask the agent; map what it says (or its silence) to a Health."""
    with store.session() as session:
        db = session.get_one(DbInstance, db_id)
        instance = session.get(Instance, db.instance_id) if db.instance_id else None
        status = InstanceStatus(instance.status) if instance else None
        message = instance.status_message if instance else ""
        if status in (InstanceStatus.SHUTOFF, InstanceStatus.STOPPING):
            return Probe(db_id, Health.SHUTDOWN, "the compute instance is stopped", status)
        if status is InstanceStatus.REPAIR:
            return Probe(db_id, Health.STARTING, f"compute {message}", status)
        if status is InstanceStatus.ERROR:
            return Probe(db_id, Health.FAILED, f"compute: {message}", status, message)
        has_repository = bool(db.repo_bucket)
        stats_due = _stats_due(db.engine_stats, settings.engine_stats_interval_seconds)
        try:
            r = reach(session, db, box_for(settings))
        except PlatformError as err:
            return Probe(db_id, Health.UNKNOWN, err.message, status)
    asked_at = utcnow()
    try:
        answer = agent_client(r, timeout=3.0).health()
    except PlatformError as err:
        return Probe(
            db_id, Health.UNKNOWN, f"agent did not answer: {err.message}", status, "", True
        )
    health = ENGINE_HEALTH.get(answer.engine, Health.UNKNOWN)
    if health is Health.HEALTHY and not answer.ready:
        health = Health.STARTING
    detail, archived, stats = answer.detail[:500], None, None
    if health is Health.HEALTHY and has_repository:
        detail, archived = _archiving(r, detail)
    if health is Health.HEALTHY and stats_due:
        stats = _engine_stats(store, settings, db_id, agent_client(r, timeout=3.0))
    storage = answer.raw.get("storage")
    usage = storage if isinstance(storage, dict) else None
    return Probe(
        db_id,
        health,
        detail,
        status,
        archived_until=archived,
        stats=stats,
        storage=usage,
        asked_at=asked_at,
    )


def _stats_due(last: dict[str, Any] | None, interval: float) -> bool:
    """Whether the engine's figures are older than ``interval`` (or were never read)."""
    try:
        at = dt.datetime.fromisoformat(str((last or {})["at"]))
    except (KeyError, ValueError):
        return True
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return (dt.datetime.now(dt.UTC) - at).total_seconds() >= interval


def _engine_stats(
    store: Store, settings: Settings, db_id: str, primary: AgentClient
) -> dict[str, Any] | None:
    """The primary's engine figures, and how far behind it each ACTIVE replica is (in the
    datastore's position unit, and in seconds where the engine says)."""
    try:
        stats: dict[str, Any] = dict(primary.stats())
    except PlatformError:
        return None
    with store.session() as session:
        db = session.get_one(DbInstance, db_id)
        box = box_for(settings)
        try:
            replicas = {
                m.name: reach(session, db, box, instance_id=m.instance_id)
                for m in live_members(session, db_id)
                if m.role == REPLICA and m.status == MemberStatus.ACTIVE.value
            }
        except PlatformError:
            replicas = {}
    stats["replicas"] = {}
    if replicas:
        try:
            head = primary.replication()
        except PlatformError:
            return stats
        position = head.get("lsn_bytes")
        seconds = {r["name"]: r.get("lag_seconds") for r in head.get("replicas", [])}
        for name, where in replicas.items():
            try:
                replayed = agent_client(where, timeout=3.0).replication().get("replay_bytes")
            except PlatformError:
                continue
            if position is not None and replayed is not None:
                stats["replicas"][name] = {
                    "behind": max(0, int(position) - int(replayed)),
                    "seconds": seconds.get(name),
                }
    return stats


def _archiving(r: Reach, detail: str) -> tuple[str, dt.datetime | None]:
    """Whether the engine archives to its repository (said in the health message when it
    does not), and up to when."""
    try:
        repository = agent_client(r, timeout=5.0).backups().get("repository") or {}
    except PlatformError:
        return detail, None
    until = repository.get("archived_until")
    moment = dt.datetime.fromtimestamp(float(until), dt.UTC) if until else None
    if not repository.get("stanza"):
        detail = f"{detail}; not archiving yet: {repository.get('detail', '')}"[:500]
    return detail, moment


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
        results = list(pool.map(lambda i: probe(store, settings, i), ids))
    _record(store, results)
    _repair_unreachable(store, settings, results)
    return len(ids)


def _record(store: Store, results: list[Probe]) -> None:
    with store.session() as session:
        for result in results:
            db = session.get_one(DbInstance, result.db_id)
            if db.health != result.health.value:
                log.info("database instance %s health %s -> %s", db.name, db.health, result.health)
            db.health, db.health_message = result.health.value, result.message
            db.health_checked_at = utcnow()
            if result.stats is not None:
                db.engine_stats = {**result.stats, "at": db.health_checked_at.isoformat()}
            if result.storage is not None:
                record_usage(db, result.storage, at=result.asked_at)
            until = result.archived_until
            if until is not None and (db.archived_until is None or db.archived_until < until):
                db.archived_until = until
            if result.compute is InstanceStatus.ERROR and db.status == DbStatus.ACTIVE.value:
                DATABASES.move(
                    session,
                    db,
                    DbStatus.ERROR,
                    f"its compute instance failed: {result.compute_message}",
                )
            elif result.storage is not None:
                autogrow(session, db)  # a storage growth when due and on


def _repair_unreachable(store: Store, settings: Settings, results: list[Probe]) -> None:
    """Have the reconciler look at once at the compute of every agent that did not answer."""
    with store.session() as session:
        instance_ids = [
            db.instance_id
            for r in results
            if r.unreachable
            and (db := session.get_one(DbInstance, r.db_id)).status == DbStatus.ACTIVE.value
            and db.instance_id
        ]
    if instance_ids:
        reconcile_once(store, settings, only=instance_ids)


def run_health_checker(store: Store, settings: Settings, stop: threading.Event) -> None:
    while not stop.wait(settings.health_interval_seconds):
        try:
            check_once(store, settings)
        except Exception:
            log.exception("health check round failed")
