"""The one choke point for instance status changes: checked against the table, recorded."""

from __future__ import annotations

from sqlalchemy.orm import Session

from oneplatform.compute.states import InstanceStatus, can_transition
from oneplatform.errors import Conflict
from oneplatform.store.models import Event, Instance, utcnow


def set_status(
    session: Session, instance: Instance, new: InstanceStatus, message: str = ""
) -> None:
    """Move ``instance`` to ``new`` if the transition table allows it, and record an event.

    Setting the status it already has only updates the message (no event).
    """
    old = InstanceStatus(instance.status)
    if old is new:
        instance.status_message = message
        return
    if not can_transition(old, new):
        raise Conflict(
            f"instance {instance.name!r} cannot go from {old.value} to {new.value}",
            code="invalid_state_transition",
        )
    instance.status = new.value
    instance.status_message = message
    if new is InstanceStatus.DELETED:
        instance.deleted_at = utcnow()
    session.add(
        Event(
            resource_type="instance",
            resource_id=instance.id,
            from_status=old.value,
            to_status=new.value,
            message=message[:2000],
        )
    )
