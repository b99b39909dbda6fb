"""The step helpers every package's operation kinds share.

A kind is built with :func:`define`, which registers it. The helpers here are the only
implementation of what kinds have in common: a deadline on a step that polls, waiting for
the resource's other operations to stop, refusing to go on once a delete took over, moving
the resource to a state, and moving it to its failure state when the operation fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneplatform.errors import NotYet, PlatformError
from oneplatform.ops.engine import StepContext
from oneplatform.ops.kinds import (
    OPEN,
    FailureFn,
    Intent,
    OperationKind,
    StepFn,
    register,
)
from oneplatform.statemachine import StateMachine
from oneplatform.store.models import Operation

RowLoader = Callable[[Session, StepContext], Any]


def define(
    name: str,
    resource_type: str,
    intent: Intent,
    *steps: tuple[str, StepFn],
    on_failure: FailureFn | None = None,
    description: str = "",
) -> OperationKind:
    """Build and register an operation kind."""
    return register(
        OperationKind(
            name=name,
            resource_type=resource_type,
            intent=intent,
            steps=tuple(steps),
            on_failure=on_failure,
            description=description,
        )
    )


def deadline(ctx: StepContext, what: str, timeout: float | None = None) -> None:
    """Fail the step with ``timeout`` once it has polled longer than ``timeout`` seconds
    (the platform's ready timeout unless given)."""
    limit = ctx.settings.ready_timeout_seconds if timeout is None else timeout
    if ctx.elapsed() > limit:
        raise PlatformError(f"{what} did not happen within {limit:.0f}s", code="timeout")


def wait_for_others(ctx: StepContext) -> None:
    """Step: let every other unfinished operation on the same resource end first.

    Deletes start with it: a delete may be asked for while a create still runs; the create
    notices the delete (:func:`check_not_superseded`) and stops, and the delete then finds
    everything the create made.
    """
    with ctx.store.session() as session:
        other = session.scalars(
            select(Operation).where(
                Operation.resource_id == ctx.resource_id,
                Operation.id != ctx.operation_id,
                Operation.status.in_(OPEN),
            )
        ).first()
        if other is None:
            return
        other_id, other_kind = other.id, other.kind
    deadline(ctx, f"the end of operation {other_id} ({other_kind})")
    raise NotYet(f"waiting for operation {other_id} ({other_kind}) to stop", retry_after=0.5)


def superseded(ctx: StepContext, machine: StateMachine[Any], row: Any) -> bool:
    """True when a delete owns the resource now and this operation is not that delete."""
    return (
        machine.deleting is not None
        and machine.state_of(row) in (machine.deleting, machine.deleted)
        and ctx.kind.intent is not Intent.DELETE
    )


def check_not_superseded(ctx: StepContext, machine: StateMachine[Any], row: Any) -> None:
    """Stop this operation (failing it with ``superseded``) once a delete took over."""
    if superseded(ctx, machine, row):
        raise PlatformError(
            f"{machine.resource_type} {row.name!r} is being deleted: {ctx.kind.name} stops here",
            code="superseded",
        )


def become(machine: StateMachine[Any], load: RowLoader, state: Any, message: str = "") -> StepFn:
    """Step: move the operation's resource to ``state``."""

    def step(ctx: StepContext) -> None:
        with ctx.transaction() as session:
            row = load(session, ctx)
            # a delete that came since the last step owns the state now: stop, as any step
            # that checks would (not a failure of the resource's)
            if state is not machine.deleted:
                check_not_superseded(ctx, machine, row)
            machine.move(session, row, state, message)

    return step


def fail_resource(machine: StateMachine[Any], load: RowLoader) -> FailureFn:
    """Failure hook: the resource goes where a failure in its state leads, with the step and
    the error as its message; unless a delete superseded this operation (the delete owns the
    state then) or the resource is already gone."""

    def on_failure(session: Session, ctx: StepContext, err: PlatformError) -> None:
        row = load(session, ctx)
        state = machine.state_of(row)
        if state is machine.deleted or superseded(ctx, machine, row):
            return
        machine.fail(session, row, f"{ctx.step_name}: {err.message}")

    return on_failure
