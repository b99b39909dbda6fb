"""Reading operations."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneplatform.errors import NotFound
from oneplatform.iam import Caller
from oneplatform.ops.kinds import OperationStatus, StepStatus
from oneplatform.schemas.operations import OperationOut
from oneplatform.store.db import Store
from oneplatform.store.models import Operation, Project


def to_out(op: Operation) -> OperationOut:
    steps = op.steps or []
    done = sum(1 for s in steps if s["status"] == StepStatus.DONE.value)
    progress = 1.0 if op.status == OperationStatus.SUCCEEDED.value else done / max(len(steps), 1)
    return OperationOut.model_validate(
        {
            "id": op.id,
            "kind": op.kind,
            "intent": op.intent,
            "resource_type": op.resource_type,
            "resource_id": op.resource_id,
            "status": op.status,
            "steps": steps,
            "progress": round(progress, 3),
            "error_code": op.error_code,
            "error_message": op.error_message,
            "created_at": op.created_at,
            "updated_at": op.updated_at,
            "finished_at": op.finished_at,
        }
    )


# The platform's own projects (names starting with "_": warm capacity's), whose work is
# the operator's to follow.
_INTERNAL = select(Project.id).where(Project.name.startswith("_", autoescape=True))


def _visible(session: Session, op: Operation | None, caller: Caller) -> bool:
    if op is None:
        return False
    if op.project_id == caller.project_id:
        return True
    if not caller.is_admin:
        return False
    # platform work (image builds, warm capacity) is visible to admins
    return op.project_id is None or op.project_id in set(session.scalars(_INTERNAL))


def get_operation(store: Store, caller: Caller, operation_id: str) -> OperationOut:
    with store.session() as session:
        op = session.get(Operation, operation_id)
        if not _visible(session, op, caller):
            raise NotFound(f"operation {operation_id!r} not found", code="operation_not_found")
        assert op is not None
        return to_out(op)


def list_operations(
    store: Store, caller: Caller, resource_id: str | None = None, limit: int = 100
) -> list[OperationOut]:
    with store.session() as session:
        query = select(Operation).order_by(Operation.created_at.desc()).limit(limit)
        if caller.is_admin:
            query = query.where(
                (Operation.project_id == caller.project_id)
                | Operation.project_id.is_(None)
                | Operation.project_id.in_(_INTERNAL)
            )
        else:
            query = query.where(Operation.project_id == caller.project_id)
        if resource_id:
            query = query.where(Operation.resource_id == resource_id)
        return [to_out(op) for op in session.scalars(query)]
