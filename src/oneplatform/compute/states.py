"""Instance states and the one table of allowed transitions."""

from __future__ import annotations

import enum


class InstanceStatus(enum.StrEnum):
    BUILD = "BUILD"
    ACTIVE = "ACTIVE"
    STOPPING = "STOPPING"
    SHUTOFF = "SHUTOFF"
    STARTING = "STARTING"
    REBOOT = "REBOOT"
    DELETING = "DELETING"
    DELETED = "DELETED"
    ERROR = "ERROR"
    UNKNOWN = "UNKNOWN"

    @property
    def is_final(self) -> bool:
        return self is InstanceStatus.DELETED

    @property
    def is_busy(self) -> bool:
        """An operation is driving the instance; other actions must wait."""
        return self in _BUSY


_BUSY = frozenset(
    {
        InstanceStatus.BUILD,
        InstanceStatus.STOPPING,
        InstanceStatus.STARTING,
        InstanceStatus.REBOOT,
        InstanceStatus.DELETING,
    }
)

S = InstanceStatus
# Every edge an instance may take. Anything else is a bug and is refused.
TRANSITIONS: dict[InstanceStatus, frozenset[InstanceStatus]] = {
    S.BUILD: frozenset({S.ACTIVE, S.ERROR, S.DELETING}),
    S.ACTIVE: frozenset({S.STOPPING, S.REBOOT, S.DELETING, S.ERROR, S.SHUTOFF, S.UNKNOWN}),
    S.STOPPING: frozenset({S.SHUTOFF, S.ERROR, S.DELETING}),
    S.SHUTOFF: frozenset({S.STARTING, S.DELETING, S.ACTIVE, S.ERROR, S.UNKNOWN}),
    S.STARTING: frozenset({S.ACTIVE, S.ERROR, S.DELETING}),
    S.REBOOT: frozenset({S.ACTIVE, S.ERROR, S.DELETING}),
    S.DELETING: frozenset({S.DELETED, S.ERROR}),
    S.ERROR: frozenset({S.DELETING, S.STARTING, S.STOPPING, S.REBOOT, S.ACTIVE, S.SHUTOFF}),
    S.UNKNOWN: frozenset({S.ACTIVE, S.SHUTOFF, S.ERROR, S.DELETING}),
    S.DELETED: frozenset(),
}


def can_transition(src: InstanceStatus, dst: InstanceStatus) -> bool:
    return dst in TRANSITIONS[src]


class PowerState(enum.StrEnum):
    """What the backend says about the unit of compute, mapped from the vendor's states."""

    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"
    STARTING = "starting"
    STOPPING = "stopping"
    CRASHED = "crashed"
    UNKNOWN = "unknown"
