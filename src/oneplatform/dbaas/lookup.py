"""Finding a project's database instances by name or id."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneplatform.dbaas.states import DbStatus
from oneplatform.errors import Conflict, NotFound
from oneplatform.iam import Caller
from oneplatform.store.models import DbInstance


def find_db(session: Session, caller: Caller, ident: str) -> DbInstance:
    db = session.scalars(
        select(DbInstance).where(
            DbInstance.project_id == caller.project_id,
            DbInstance.deleted_at.is_(None),
            (DbInstance.id == ident) | (DbInstance.name == ident),
        )
    ).first()
    if db is None:
        raise NotFound(f"database instance {ident!r} not found", code="db_instance_not_found")
    return db


def find_db_any(session: Session, caller: Caller, ident: str) -> DbInstance:
    """A database instance by name or id, live or deleted (the live one, else the last
    deleted of that name): backups and windows outlive their instance."""
    rows = session.scalars(
        select(DbInstance)
        .where(
            DbInstance.project_id == caller.project_id,
            (DbInstance.id == ident) | (DbInstance.name == ident),
        )
        .order_by(DbInstance.deleted_at.is_(None).desc(), DbInstance.deleted_at.desc())
    ).first()
    if rows is None:
        raise NotFound(f"database instance {ident!r} not found", code="db_instance_not_found")
    return rows


def require_active(db: DbInstance) -> None:
    """Refuse (409 invalid_state) unless the database instance is ACTIVE."""
    if db.status != DbStatus.ACTIVE.value:
        raise Conflict(
            f"database instance {db.name!r} is {db.status}, not ACTIVE",
            code="invalid_state",
            status=db.status,
        )
