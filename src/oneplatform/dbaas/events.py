"""A database instance's events: what happened to it, its members, their compute and its
backups, from the platform's event log (every state change is recorded there)."""

from __future__ import annotations

from sqlalchemy import select

from oneplatform.dbaas.lookup import find_db_any
from oneplatform.iam import Caller
from oneplatform.schemas.databases import DbEventOut
from oneplatform.store.db import Store
from oneplatform.store.models import Backup, DbMember, Event

MAX_EVENTS = 1000


def db_events(store: Store, caller: Caller, ident: str, limit: int = 100) -> list[DbEventOut]:
    """The ``limit`` latest events of database instance ``ident`` (live or deleted), oldest
    first."""
    with store.session() as session:
        db = find_db_any(session, caller, ident)
        names: dict[str, tuple[str, str]] = {db.id: ("database", db.name)}
        for m in session.scalars(select(DbMember).where(DbMember.db_id == db.id)):
            names[m.id] = ("member", m.name)
            names.setdefault(m.instance_id, ("compute", m.name))
        for b in session.scalars(select(Backup).where(Backup.db_instance_id == db.id)):
            names[b.id] = ("backup", b.name)
        rows = session.scalars(
            select(Event)
            .where(Event.resource_id.in_(names))
            .order_by(Event.created_at.desc(), Event.id.desc())
            .limit(max(1, min(limit, MAX_EVENTS)))
        ).all()
        return [
            DbEventOut(
                at=e.created_at,
                resource=names[e.resource_id][0],
                name=names[e.resource_id][1],
                from_status=e.from_status,
                to_status=e.to_status,
                message=e.message,
            )
            for e in reversed(rows)
        ]
