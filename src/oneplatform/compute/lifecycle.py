"""The one choke point for instance status changes: checked against the table, recorded."""

from __future__ import annotations

from sqlalchemy.orm import Session

from oneplatform.compute.states import TRANSITIONS, InstanceStatus
from oneplatform.statemachine import transition
from oneplatform.store.models import Instance


def set_status(
    session: Session, instance: Instance, new: InstanceStatus, message: str = ""
) -> None:
    """Move ``instance`` to ``new`` if the transition table allows it, and record an event.

    Setting the status it already has only updates the message (no event).
    """
    transition(
        session, "instance", instance, new, TRANSITIONS, message, deleted=InstanceStatus.DELETED
    )
