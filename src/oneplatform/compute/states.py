"""Instance statuses and their state machine."""

from __future__ import annotations

import enum

from oneplatform.statemachine import StateMachine


class InstanceStatus(enum.StrEnum):
    BUILD = "BUILD"
    ACTIVE = "ACTIVE"
    STOPPING = "STOPPING"
    SHUTOFF = "SHUTOFF"
    STARTING = "STARTING"
    REBOOT = "REBOOT"
    RESIZE = "RESIZE"
    REPAIR = "REPAIR"
    DELETING = "DELETING"
    DELETED = "DELETED"
    ERROR = "ERROR"
    UNKNOWN = "UNKNOWN"


S = InstanceStatus
INSTANCES: StateMachine[InstanceStatus] = StateMachine(
    resource_type="instance",
    states=InstanceStatus,
    initial=S.BUILD,
    transitions={
        S.BUILD: frozenset({S.ACTIVE, S.ERROR, S.DELETING}),
        S.ACTIVE: frozenset(
            {S.STOPPING, S.REBOOT, S.RESIZE, S.REPAIR, S.DELETING, S.ERROR, S.SHUTOFF, S.UNKNOWN}
        ),
        S.STOPPING: frozenset({S.SHUTOFF, S.ERROR, S.DELETING}),
        S.SHUTOFF: frozenset(
            {S.STARTING, S.RESIZE, S.REPAIR, S.DELETING, S.ACTIVE, S.ERROR, S.UNKNOWN}
        ),
        S.STARTING: frozenset({S.ACTIVE, S.ERROR, S.DELETING}),
        S.REBOOT: frozenset({S.ACTIVE, S.ERROR, S.DELETING}),
        S.RESIZE: frozenset({S.ACTIVE, S.ERROR, S.DELETING}),
        S.REPAIR: frozenset({S.ACTIVE, S.ERROR, S.DELETING}),
        S.DELETING: frozenset({S.DELETED, S.ERROR}),
        S.ERROR: frozenset(
            {S.DELETING, S.STARTING, S.STOPPING, S.REBOOT, S.RESIZE, S.REPAIR, S.ACTIVE, S.SHUTOFF}
        ),
        S.UNKNOWN: frozenset({S.ACTIVE, S.SHUTOFF, S.REPAIR, S.ERROR, S.DELETING}),
        S.DELETED: frozenset(),
    },
    stable=frozenset({S.ACTIVE, S.SHUTOFF, S.ERROR, S.UNKNOWN, S.DELETED}),
    failed=S.ERROR,
    deleting=S.DELETING,
    deleted=S.DELETED,
    description="A unit of compute on a host. Every status but `DELETED` has a way out.",
)
