"""Database instance statuses (lifecycle), engine health, and the state machine."""

from __future__ import annotations

import enum

from oneplatform.statemachine import StateMachine


class DbStatus(enum.StrEnum):
    BUILD = "BUILD"
    ACTIVE = "ACTIVE"
    RESTARTING = "RESTARTING"
    SWITCHOVER = "SWITCHOVER"  # another member becomes the primary
    RESIZE = "RESIZE"  # a move to another flavor (of any compute type), or storage growth
    FAILOVER = "FAILOVER"  # its primary does not answer: fenced, a replica promoted
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
        D.ACTIVE: frozenset(
            {D.RESTARTING, D.SWITCHOVER, D.RESIZE, D.FAILOVER, D.DELETING, D.ERROR}
        ),
        D.RESTARTING: frozenset({D.ACTIVE, D.ERROR, D.DELETING}),
        D.SWITCHOVER: frozenset({D.ACTIVE, D.ERROR, D.DELETING}),
        D.RESIZE: frozenset({D.ACTIVE, D.ERROR, D.DELETING}),
        D.FAILOVER: frozenset({D.ACTIVE, D.ERROR, D.DELETING}),
        D.ERROR: frozenset({D.DELETING, D.RESTARTING, D.ACTIVE}),
        D.DELETING: frozenset({D.DELETED, D.ERROR}),
        D.DELETED: frozenset(),
    },
    stable=frozenset({D.ACTIVE, D.ERROR, D.DELETED}),
    failed=D.ERROR,
    deleting=D.DELETING,
    deleted=D.DELETED,
    description="A database server: a compute instance, a datastore, storage and credentials "
    "(with its replicas, a group of members, one of them the primary). Its engine's health is "
    "reported beside its status.",
)


class MemberStatus(enum.StrEnum):
    BUILD = "BUILD"
    ACTIVE = "ACTIVE"
    DETACHING = "DETACHING"
    DELETING = "DELETING"
    DELETED = "DELETED"
    ERROR = "ERROR"


M = MemberStatus
MEMBERS: StateMachine[MemberStatus] = StateMachine(
    resource_type="db_member",
    states=MemberStatus,
    initial=M.BUILD,
    transitions={
        M.BUILD: frozenset({M.ACTIVE, M.ERROR, M.DELETING}),
        M.ACTIVE: frozenset({M.ERROR, M.DELETING, M.DETACHING}),
        # A replica becoming a database of its own: ACTIVE again as that one's primary.
        M.DETACHING: frozenset({M.ACTIVE, M.ERROR}),
        M.ERROR: frozenset({M.ACTIVE, M.DELETING}),
        M.DELETING: frozenset({M.DELETED, M.ERROR}),
        M.DELETED: frozenset(),
    },
    stable=frozenset({M.ACTIVE, M.ERROR, M.DELETED}),
    failed=M.ERROR,
    deleting=M.DELETING,
    deleted=M.DELETED,
    description="One server of a database instance's group: its primary or a streaming "
    "replica, on a compute instance of its own.",
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
