"""One choke point for status changes of any resource: checked against its table, recorded."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from oneplatform.errors import Conflict
from oneplatform.store.models import Event, utcnow

E = TypeVar("E", bound=enum.StrEnum)


def transition(
    session: Session,
    resource_type: str,
    row: Any,
    new: E,
    table: Mapping[E, frozenset[E]],
    message: str = "",
    deleted: E | None = None,
) -> None:
    """Move ``row.status`` to ``new`` if ``table`` allows it, and record an event.

    Setting the status a row already has only updates its message (no event). Reaching
    ``deleted`` stamps ``row.deleted_at``.
    """
    old = type(new)(row.status)
    if old is new:
        row.status_message = message
        return
    if new not in table[old]:
        raise Conflict(
            f"{resource_type} {row.name!r} cannot go from {old.value} to {new.value}",
            code="invalid_state_transition",
        )
    row.status = new.value
    row.status_message = message
    if deleted is not None and new is deleted:
        row.deleted_at = utcnow()
    session.add(
        Event(
            resource_type=resource_type,
            resource_id=row.id,
            from_status=old.value,
            to_status=new.value,
            message=message[:2000],
        )
    )
