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

from oneplatform.errors import Conflict
from oneplatform.store.models import Event, Node


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

    @property
    def is_stable(self) -> bool:
        """A state the node rests in (no operation is driving it)."""
        return self in _STABLE


_STABLE = frozenset(
    {
        NodeState.ENROLL,
        NodeState.VERIFY_FAILED,
        NodeState.MANAGEABLE,
        NodeState.INSPECT_FAILED,
        NodeState.CLEAN_FAILED,
        NodeState.AVAILABLE,
        NodeState.DEPLOY_FAILED,
        NodeState.ACTIVE,
    }
)

N = NodeState
TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
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
}

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


def set_node_state(session: Session, node: Node, new: NodeState, message: str = "") -> None:
    """The one way a node changes state: checked against TRANSITIONS, recorded as an event."""
    old = NodeState(node.state)
    if old is new:
        return
    if new not in TRANSITIONS[old]:
        raise Conflict(
            f"node {node.name!r} cannot go from {old.value!r} to {new.value!r}",
            code="invalid_state_transition",
        )
    node.state = new.value
    node.target_state = None if new.is_stable else node.target_state
    if message and new.value.endswith("failed"):
        node.last_error = message[:2000]
    session.add(
        Event(
            resource_type="node",
            resource_id=node.id,
            from_status=old.value,
            to_status=new.value,
            message=message[:2000],
        )
    )
