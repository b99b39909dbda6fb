"""Database instance statuses (lifecycle), engine health, and the state machine."""

from __future__ import annotations

import enum

from oneplatform.statemachine import StateMachine


class DbStatus(enum.StrEnum):
    BUILD = "BUILD"
    ACTIVE = "ACTIVE"
    RESTARTING = "RESTARTING"
    DELETING = "DELETING"
    DELETED = "DELETED"
    ERROR = "ERROR"


class Health(enum.StrEnum):
    """What the engine itself says, refreshed by the health checker."""

    HEALTHY = "HEALTHY"  # accepting connections
    STARTING = "STARTING"  # the agent is bringing the engine up
    SHUTDOWN = "SHUTDOWN"  # the engine or its compute instance is stopped
    FAILED = "FAILED"  # the engine crashed or cannot start
    UNKNOWN = "UNKNOWN"  # the agent did not answer


D = DbStatus
DATABASES: StateMachine[DbStatus] = StateMachine(
    resource_type="db_instance",
    states=DbStatus,
    initial=D.BUILD,
    transitions={
        D.BUILD: frozenset({D.ACTIVE, D.ERROR, D.DELETING}),
        D.ACTIVE: frozenset({D.RESTARTING, D.DELETING, D.ERROR}),
        D.RESTARTING: frozenset({D.ACTIVE, D.ERROR, D.DELETING}),
        D.ERROR: frozenset({D.DELETING, D.RESTARTING, D.ACTIVE}),
        D.DELETING: frozenset({D.DELETED, D.ERROR}),
        D.DELETED: frozenset(),
    },
    stable=frozenset({D.ACTIVE, D.ERROR, D.DELETED}),
    failed=D.ERROR,
    deleting=D.DELETING,
    deleted=D.DELETED,
    description="A database server: a compute instance, a datastore, storage and credentials. "
    "Its engine's health is reported beside its status.",
)


class BackupStatus(enum.StrEnum):
    NEW = "NEW"
    BUILDING = "BUILDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    DELETING = "DELETING"
    DELETED = "DELETED"


B = BackupStatus
BACKUPS: StateMachine[BackupStatus] = StateMachine(
    resource_type="backup",
    states=BackupStatus,
    initial=B.NEW,
    transitions={
        B.NEW: frozenset({B.BUILDING, B.FAILED, B.DELETING}),
        B.BUILDING: frozenset({B.COMPLETED, B.FAILED, B.DELETING}),
        B.COMPLETED: frozenset({B.DELETING}),
        B.FAILED: frozenset({B.DELETING}),
        B.DELETING: frozenset({B.DELETED, B.FAILED}),
        B.DELETED: frozenset(),
    },
    stable=frozenset({B.COMPLETED, B.FAILED, B.DELETED}),
    failed=B.FAILED,
    deleting=B.DELETING,
    deleted=B.DELETED,
    description="A backup of a database instance in its repository. It outlives its database "
    "instance; retention (or a delete) expires it.",
)
