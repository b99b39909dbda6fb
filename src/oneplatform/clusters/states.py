"""The cluster and cluster-node state machines."""

from __future__ import annotations

import enum

from oneplatform.statemachine import StateMachine


class ClusterStatus(enum.StrEnum):
    BUILD = "BUILD"
    ACTIVE = "ACTIVE"
    RESIZE = "RESIZE"
    ERROR = "ERROR"
    DELETING = "DELETING"
    DELETED = "DELETED"


C = ClusterStatus
CLUSTERS: StateMachine[ClusterStatus] = StateMachine(
    resource_type="cluster",
    states=ClusterStatus,
    initial=C.BUILD,
    transitions={
        C.BUILD: frozenset({C.ACTIVE, C.ERROR, C.DELETING}),
        C.ACTIVE: frozenset({C.RESIZE, C.DELETING}),
        C.RESIZE: frozenset({C.ACTIVE, C.ERROR, C.DELETING}),
        C.ERROR: frozenset({C.RESIZE, C.DELETING}),
        C.DELETING: frozenset({C.DELETED, C.ERROR}),
        C.DELETED: frozenset(),
    },
    stable=frozenset({C.ACTIVE, C.ERROR, C.DELETED}),
    failed=C.ERROR,
    deleting=C.DELETING,
    deleted=C.DELETED,
    description="A container pool of one project composed from the platform's own VMs "
    "(`onep cluster`): its nodes are built, registered as hosts, added or drained by a resize.",
)


class NodeStatus(enum.StrEnum):
    BUILD = "BUILD"
    ACTIVE = "ACTIVE"
    DRAINING = "DRAINING"
    ERROR = "ERROR"
    DELETED = "DELETED"


N = NodeStatus
CLUSTER_NODES: StateMachine[NodeStatus] = StateMachine(
    resource_type="cluster_node",
    states=NodeStatus,
    initial=N.BUILD,
    transitions={
        N.BUILD: frozenset({N.ACTIVE, N.ERROR, N.DRAINING}),
        N.ACTIVE: frozenset({N.DRAINING}),
        N.ERROR: frozenset({N.DRAINING}),
        N.DRAINING: frozenset({N.DELETED, N.ERROR, N.ACTIVE}),  # ACTIVE: a drain undone
        N.DELETED: frozenset(),
    },
    stable=frozenset({N.ACTIVE, N.ERROR, N.DELETED}),
    failed=N.ERROR,
    deleting=N.DRAINING,
    deleted=N.DELETED,
    message_field=None,
    description="One node of a cluster: its VM is built, then it is a host of the cluster's "
    "pool until a resize or the cluster's delete drains and removes it.",
)
