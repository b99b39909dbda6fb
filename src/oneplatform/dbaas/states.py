"""Database instance statuses (lifecycle), engine health, and the allowed transitions."""

from __future__ import annotations

import enum

from sqlalchemy.orm import Session

from oneplatform.statemachine import transition
from oneplatform.store.models import DbInstance


class DbStatus(enum.StrEnum):
    BUILD = "BUILD"
    ACTIVE = "ACTIVE"
    RESTARTING = "RESTARTING"
    DELETING = "DELETING"
    DELETED = "DELETED"
    ERROR = "ERROR"

    @property
    def is_busy(self) -> bool:
        return self in (DbStatus.BUILD, DbStatus.RESTARTING, DbStatus.DELETING)


class Health(enum.StrEnum):
    """What the engine itself says, refreshed by the health checker."""

    HEALTHY = "HEALTHY"  # accepting connections
    STARTING = "STARTING"  # the agent is bringing the engine up
    SHUTDOWN = "SHUTDOWN"  # the engine or its compute instance is stopped
    FAILED = "FAILED"  # the engine crashed or cannot start
    UNKNOWN = "UNKNOWN"  # the agent did not answer


D = DbStatus
TRANSITIONS: dict[DbStatus, frozenset[DbStatus]] = {
    D.BUILD: frozenset({D.ACTIVE, D.ERROR, D.DELETING}),
    D.ACTIVE: frozenset({D.RESTARTING, D.DELETING, D.ERROR}),
    D.RESTARTING: frozenset({D.ACTIVE, D.ERROR, D.DELETING}),
    D.ERROR: frozenset({D.DELETING, D.RESTARTING, D.ACTIVE}),
    D.DELETING: frozenset({D.DELETED, D.ERROR}),
    D.DELETED: frozenset(),
}


def set_db_status(session: Session, db: DbInstance, new: DbStatus, message: str = "") -> None:
    transition(session, "db_instance", db, new, TRANSITIONS, message, deleted=DbStatus.DELETED)
