"""Reading the platform's services the way Trove's requests need them: an instance by id or
name that may be a database instance or one of its replicas, request models built with the
platform's own validation (a refusal is a 400, never a 500)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from oneplatform.api.trove.views import member_id, member_name, shown
from oneplatform.errors import InvalidInput, NotFound
from oneplatform.schemas.databases import DbInstanceOut, DbMemberOut

M = TypeVar("M", bound=BaseModel)


def build(model: type[M], **fields: Any) -> M:
    """``model(**fields)``, its validation errors as one 400 with every problem named."""
    try:
        return model(**fields)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()
        )
        raise InvalidInput(f"invalid request: {problems}", code="invalid_input") from None


@dataclass(frozen=True)
class Found:
    """A Trove instance: a database instance (``member`` None, or its primary), or one of
    its replicas."""

    db: DbInstanceOut
    member: DbMemberOut | None = None

    @property
    def replica(self) -> DbMemberOut | None:
        """The member when it is a replica (None for the database instance's primary)."""
        return self.member if self.member is not None and self.member.role != "primary" else None


def replicas_of(db: DbInstanceOut) -> list[DbMemberOut]:
    return [m for m in shown(db) if m.role != "primary"]


def members(db: DbInstanceOut) -> list[Found]:
    """``db``'s Trove instances: one per member (the database instance itself while it has
    none yet; a move's former primary on its way out is none)."""
    return [Found(db, m) for m in shown(db)] or [Found(db)]


def trove_id(found: Found) -> str:
    return member_id(found.db, found.member) if found.member is not None else found.db.id


def find(ident: str, dbs: list[DbInstanceOut]) -> Found:
    """``ident`` (a Trove id or a name, see ``views.member_id``) among ``dbs`` (the caller's)
    and their members: after a switchover the database instance's id names the former
    primary, now a replica, and the promoted replica's name the primary."""
    for db in dbs:
        for found in members(db):
            m = found.member
            names = (db.id, db.name) if m is None else (member_id(db, m), member_name(db, m))
            if ident in names:
                return found
    raise NotFound(f"instance {ident!r} not found", code="db_instance_not_found")
