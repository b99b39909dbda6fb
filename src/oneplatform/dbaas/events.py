"""A database instance's events (what happened to it, its members, their compute and its
backups, from the platform's event log: every state change is recorded there) and its
engine's log (a member's server output, which its agent keeps)."""

from __future__ import annotations

from sqlalchemy import select

from oneplatform.config import Settings
from oneplatform.dbaas.endpoints import PRIMARY, live_members
from oneplatform.dbaas.lookup import find_db, find_db_any
from oneplatform.dbaas.reach import agent_client, reach
from oneplatform.errors import NotFound
from oneplatform.iam import Caller
from oneplatform.schemas.databases import DbEventOut, DbLogOut
from oneplatform.secrets import box_for
from oneplatform.store.db import Store
from oneplatform.store.models import Backup, DbMember, Event

MAX_EVENTS = 1000
MAX_LOG_LINES = 5000  # what an agent keeps


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


def db_logs(
    store: Store,
    settings: Settings,
    caller: Caller,
    ident: str,
    tail: int = 100,
    after: int | None = None,
    member: str | None = None,
) -> DbLogOut:
    """The engine log of the database's primary (or of its member ``member``): the last
    ``tail`` lines, or those after line ``after``."""
    with store.session() as session:
        db = find_db(session, caller, ident)
        members = live_members(session, db.id)
        if member is None:
            chosen = next((m for m in members if m.role == PRIMARY), None)
        else:
            chosen = next((m for m in members if member in (m.name, m.id)), None)
        if chosen is None:
            what = f"no member {member!r}" if member else "no primary"
            raise NotFound(f"{db.name!r} has {what}", code="replica_not_found")
        r = reach(session, db, box_for(settings), instance_id=chosen.instance_id)
        name = chosen.name
    answer = agent_client(r, timeout=10.0).logs(tail, after)
    return DbLogOut(
        member=name,
        lines=[str(line) for line in answer.get("lines", [])],
        next=int(answer.get("next") or 0),
    )
