"""Quotas per project: what an admin allows a project, checked where resources are taken.

Five resources: ``databases`` (database instances; a replica is a member, not one),
``vcpus``, ``ram_mb`` and ``storage_gb`` (every live compute instance of the project —
database members, replicas and the compute API's own instances: its flavor's sizes, and for
storage the flavor's disk plus its data volumes, which is ``Instance.disk_gb``), and
``backups`` (kept backups; a failed one holds nothing and does not count). No limit is the
default: a project without a quota row, or a NULL limit, is unlimited.

A check happens in the transaction that takes the resource, after it locks the project's
row (PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already admits one writer at a time): two
concurrent creates of one project take turns, the second sees the first's rows, and a quota
holds under any concurrency. Every taker locks the project before the hosts (the scheduler
locks hosts after), so the two locks are always taken in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from oneplatform.errors import NotFound, QuotaExceeded
from oneplatform.iam import Caller
from oneplatform.schemas.projects import ProjectOut
from oneplatform.schemas.quotas import RESOURCES, QuotaOut, QuotaSet, QuotaUsage
from oneplatform.store.db import Store, is_postgres
from oneplatform.store.models import Backup, DbInstance, Instance, Project, ProjectQuota

UNITS = {"ram_mb": " MiB", "storage_gb": " GB"}
FAILED_BACKUP = "FAILED"


@dataclass(frozen=True)
class Need:
    """What a request takes (or, as a credit, gives back as it takes it)."""

    databases: int = 0
    vcpus: int = 0
    ram_mb: int = 0
    storage_gb: int = 0
    backups: int = 0

    def minus(self, credit: Need | None) -> Need:
        if credit is None:
            return self
        return Need(*(getattr(self, f.name) - getattr(credit, f.name) for f in fields(self)))

    def times(self, n: int) -> Need:
        return Need(*(getattr(self, f.name) * n for f in fields(self)))

    def plus(self, other: Need) -> Need:
        return Need(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def compute_need(vcpus: int, ram_mb: int, disk_gb: int) -> Need:
    return Need(vcpus=vcpus, ram_mb=ram_mb, storage_gb=disk_gb)


def usage(session: Session, project_id: str) -> dict[str, int]:
    """What the project holds now, by resource."""
    vcpus, ram_mb, disk_gb = session.execute(
        select(
            func.coalesce(func.sum(Instance.vcpus), 0),
            func.coalesce(func.sum(Instance.ram_mb), 0),
            func.coalesce(func.sum(Instance.disk_gb), 0),
        ).where(Instance.project_id == project_id, Instance.deleted_at.is_(None))
    ).one()
    databases = session.scalar(
        select(func.count())
        .select_from(DbInstance)
        .where(DbInstance.project_id == project_id, DbInstance.deleted_at.is_(None))
    )
    backups = session.scalar(
        select(func.count())
        .select_from(Backup)
        .where(
            Backup.project_id == project_id,
            Backup.deleted_at.is_(None),
            Backup.status != FAILED_BACKUP,
        )
    )
    return {
        "databases": int(databases or 0),
        "vcpus": int(vcpus),
        "ram_mb": int(ram_mb),
        "storage_gb": int(disk_gb),
        "backups": int(backups or 0),
    }


def require(session: Session, project_id: str, need: Need, credit: Need | None = None) -> None:
    """Raise QuotaExceeded (403 ``quota_exceeded``, naming the resource) when taking
    ``need`` — less ``credit``, what the same request gives back (a move's former
    primary, a resize's former size) — would take the project over a limit. Locks the
    project's row until the caller's transaction ends; nothing is written."""
    net = need.minus(credit)
    if not any(getattr(net, name) > 0 for name in RESOURCES):
        return
    if is_postgres(session.get_bind().engine):
        session.execute(select(Project.id).where(Project.id == project_id).with_for_update())
    quota = session.get(ProjectQuota, project_id)
    if quota is None:
        return
    limited = [
        name for name in RESOURCES if getattr(quota, name) is not None and getattr(net, name) > 0
    ]
    if not limited:
        return
    used = usage(session, project_id)
    for name in limited:
        limit, more = int(getattr(quota, name)), int(getattr(net, name))
        if used[name] + more > limit:
            unit = UNITS.get(name, "")
            raise QuotaExceeded(
                f"quota exceeded for {name}: the project uses {used[name]}{unit} of "
                f"{limit}{unit} and this needs {more}{unit} more",
                resource=name,
                limit=limit,
                used=used[name],
                requested=more,
            )


# -- the API's --------------------------------------------------------------------------------
def _project(session: Session, caller: Caller, name: str | None) -> Project:
    """The project named (an admin: any; else the caller's own), or the caller's."""
    if name is None or name == caller.project_name:
        return session.get_one(Project, caller.project_id)
    caller.require_admin()
    project = session.scalars(select(Project).where(Project.name == name)).first()
    if project is None:
        raise NotFound(f"project {name!r} not found", code="project_not_found")
    return project


def _out(session: Session, project: Project) -> QuotaOut:
    quota = session.get(ProjectQuota, project.id)
    used = usage(session, project.id)
    return QuotaOut(
        project=ProjectOut.model_validate(project),
        quota={
            name: QuotaUsage(
                limit=getattr(quota, name) if quota is not None else None, used=used[name]
            )
            for name in RESOURCES
        },
    )


def get_quota(store: Store, caller: Caller, project: str | None = None) -> QuotaOut:
    with store.session() as session:
        return _out(session, _project(session, caller, project))


def set_quota(store: Store, caller: Caller, project: str, req: QuotaSet) -> QuotaOut:
    """Change the limits ``req`` names (admin only). A limit below what the project uses
    now is allowed — nothing is taken away; the project can take no more until it is under."""
    caller.require_admin()
    with store.session() as session:
        target = _project(session, caller, project)
        if is_postgres(session.get_bind().engine):
            session.execute(select(Project.id).where(Project.id == target.id).with_for_update())
        quota = session.get(ProjectQuota, target.id)
        if quota is None:
            quota = ProjectQuota(project_id=target.id)
            session.add(quota)
        for name in req.model_fields_set:
            setattr(quota, name, getattr(req, name))
        session.flush()
        return _out(session, target)
