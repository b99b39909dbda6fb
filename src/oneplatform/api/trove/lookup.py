"""Reading the platform's services the way Trove's requests need them: an instance by id or
name that may be a database instance or one of its replicas, request models built with the
platform's own validation (a refusal is a 400, never a 500)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

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
    """A Trove instance: a database instance, or (``member`` set) one of its replicas."""

    db: DbInstanceOut
    member: DbMemberOut | None = None


def replicas_of(db: DbInstanceOut) -> list[DbMemberOut]:
    return [m for m in db.members if m.role != "primary"]


def find(ident: str, dbs: list[DbInstanceOut]) -> Found:
    """``ident`` (an id or a name) among ``dbs`` (the caller's) and their replicas."""
    for db in dbs:
        if ident in (db.id, db.name):
            return Found(db)
    for db in dbs:
        for m in replicas_of(db):
            if ident == m.name:
                return Found(db, m)
    raise NotFound(f"instance {ident!r} not found", code="db_instance_not_found")
