"""The node state machine, in the spirit of Ironic's ``states.py``.

::

    enroll ──manage──> verifying ──> manageable ──provide──> cleaning ──> available
                                         │  ^                                 │
                                   inspect  │                              deploy
                                         v  │                                 v
                                      inspecting                          deploying ──> active
                                                                                          │
                        available <── cleaning <── deleting <──────────────── delete ─────┘

Every failure has its own state (``verify failed``, ``inspect failed``, ``deploy failed``,
``clean failed``) from which an operator can retry (``manage`` / ``provide``) or delete.
"""

from __future__ import annotations

import enum

from sqlalchemy.orm import Session

from oneplatform.statemachine import StateMachine
from oneplatform.store.models import Host, Node


class NodeState(enum.StrEnum):
    ENROLL = "enroll"
    VERIFYING = "verifying"
    VERIFY_FAILED = "verify failed"
    MANAGEABLE = "manageable"
    INSPECTING = "inspecting"
    INSPECT_FAILED = "inspect failed"
    CLEANING = "cleaning"
    CLEAN_FAILED = "clean failed"
    AVAILABLE = "available"
    DEPLOYING = "deploying"
    DEPLOY_FAILED = "deploy failed"
    ACTIVE = "active"
    DELETING = "deleting"


N = NodeState
NODES: StateMachine[NodeState] = StateMachine(
    resource_type="node",
    states=NodeState,
    initial=N.ENROLL,
    transitions={
        N.ENROLL: frozenset({N.VERIFYING}),
        N.VERIFYING: frozenset({N.MANAGEABLE, N.VERIFY_FAILED}),
        N.VERIFY_FAILED: frozenset({N.VERIFYING}),
        N.MANAGEABLE: frozenset({N.INSPECTING, N.CLEANING, N.VERIFYING}),
        N.INSPECTING: frozenset({N.MANAGEABLE, N.INSPECT_FAILED}),
        N.INSPECT_FAILED: frozenset({N.INSPECTING, N.VERIFYING}),
        N.CLEANING: frozenset({N.AVAILABLE, N.CLEAN_FAILED}),
        N.CLEAN_FAILED: frozenset({N.CLEANING, N.VERIFYING}),
        N.AVAILABLE: frozenset({N.DEPLOYING, N.VERIFYING}),
        N.DEPLOYING: frozenset({N.ACTIVE, N.DEPLOY_FAILED, N.DELETING}),
        N.DEPLOY_FAILED: frozenset({N.DELETING, N.CLEANING}),
        N.ACTIVE: frozenset({N.DELETING}),
        N.DELETING: frozenset({N.CLEANING, N.CLEAN_FAILED}),
    },
    stable=frozenset(
        {
            N.ENROLL,
            N.VERIFY_FAILED,
            N.MANAGEABLE,
            N.INSPECT_FAILED,
            N.CLEAN_FAILED,
            N.AVAILABLE,
            N.DEPLOY_FAILED,
            N.ACTIVE,
        }
    ),
    failed=N.CLEAN_FAILED,
    failure={
        N.VERIFYING: N.VERIFY_FAILED,
        N.INSPECTING: N.INSPECT_FAILED,
        N.CLEANING: N.CLEAN_FAILED,
        N.DELETING: N.CLEAN_FAILED,
        N.DEPLOYING: N.DEPLOY_FAILED,
    },
    field="state",
    message_field=None,
    description="A bare-metal machine behind a BMC. Only `available` nodes take instances.",
)

# What an operator may ask for, from which states, and where it leads first.
ACTIONS: dict[str, tuple[frozenset[NodeState], NodeState]] = {
    "manage": (
        frozenset(
            {N.ENROLL, N.VERIFY_FAILED, N.INSPECT_FAILED, N.CLEAN_FAILED, N.AVAILABLE, N.MANAGEABLE}
        ),
        N.VERIFYING,
    ),
    "inspect": (frozenset({N.MANAGEABLE, N.INSPECT_FAILED}), N.INSPECTING),
    "provide": (frozenset({N.MANAGEABLE, N.CLEAN_FAILED}), N.CLEANING),
}


def move_node(session: Session, node: Node, new: NodeState, message: str = "") -> None:
    """The one way a node changes state: checked and recorded by :data:`NODES`; a failed
    state keeps the message as the node's last error, a resting state ends its target, and
    the node's host takes instances exactly while the node is ``available``."""
    if not NODES.move(session, node, new, message):
        return
    if NODES.is_stable(new):
        node.target_state = None
    if message and new.value.endswith("failed"):
        node.last_error = message[:2000]
    session.get_one(Host, node.host_id).enabled = new is NodeState.AVAILABLE
