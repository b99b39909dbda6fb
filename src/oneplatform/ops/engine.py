"""The operations engine: enqueue, claim with a lease and a fencing token, run steps.

A worker claims one operation at a time. It holds a lease (renewed by a heartbeat while a
step runs) and a fencing token (bumped by every claim). Every write a worker makes about an
operation checks the token in the same transaction, so a worker that lost its lease (paused,
partitioned, or presumed dead) can never overwrite the work of the one that took over.

A step that finished is recorded as done and never runs again. A step that raises
:class:`NotYet` is polled again later without holding the lease in between. A step that
raises anything else fails the operation and calls the kind's ``on_failure``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, or_, select, update
from sqlalchemy.orm import Session

from oneplatform.config import Settings
from oneplatform.errors import LeaseLost, NotYet, PlatformError
from oneplatform.ops.kinds import (
    OperationKind,
    OperationStatus,
    StepStatus,
    get_kind,
    initial_steps,
)
from oneplatform.store.db import Store
from oneplatform.store.models import Operation, utcnow

log = logging.getLogger(__name__)


def enqueue(
    session: Session,
    kind: OperationKind,
    resource_id: str,
    project_id: str | None,
    params: dict[str, Any] | None = None,
) -> Operation:
    """Add an operation in the caller's transaction; a worker picks it up after commit."""
    op = Operation(
        kind=kind.name,
        intent=kind.intent.value,
        resource_type=kind.resource_type,
        resource_id=resource_id,
        project_id=project_id,
        status=OperationStatus.PENDING.value,
        steps=initial_steps(kind),
        params=params or {},
        not_before=utcnow(),
    )
    session.add(op)
    session.flush()
    # Wake this process's idle workers once the operation is visible (the API and the
    # workers of `onep up` share the process); others find it at their next poll.
    event.listen(session, "after_commit", _wake_workers, once=True)
    return op


WORK_ARRIVED = threading.Event()


def _wake_workers(_session: Session) -> None:
    WORK_ARRIVED.set()


@dataclass
class Claim:
    operation_id: str
    token: int
    owner: str


class StepContext:
    """What a step gets: the operation's identity and params, and fenced store access."""

    def __init__(
        self, store: Store, settings: Settings, claim: Claim, op: Operation, kind: OperationKind
    ) -> None:
        self.store = store
        self.settings = settings
        self.claim = claim
        self.operation_id = op.id
        self.kind = kind
        self.resource_id = op.resource_id
        self.project_id = op.project_id
        self.params: dict[str, Any] = dict(op.params or {})
        self.step_name = ""
        self.step_started_at: dt.datetime | None = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A transaction that commits only while this worker still holds the operation."""
        with self.store.session() as session:
            _fence(session, self.claim, self.store.postgres)
            yield session

    def progress(self, message: str) -> None:
        """Record a human-readable progress line on the running step."""
        with self.transaction() as session:
            op = session.get_one(Operation, self.operation_id)
            op.steps = _with_step(op.steps, self.step_name, message=message[-500:])

    def remember(self, **values: Any) -> None:
        """Keep ``values`` in the operation's params for the steps (and retries) after this
        one; written only while this worker holds the operation."""
        with self.transaction() as session:
            op = session.get_one(Operation, self.operation_id)
            op.params = {**(op.params or {}), **values}
        self.params.update(values)

    def elapsed(self) -> float:
        if self.step_started_at is None:
            return 0.0
        return (utcnow() - self.step_started_at).total_seconds()


def _fence(session: Session, claim: Claim, postgres: bool) -> Operation:
    query = select(Operation).where(
        Operation.id == claim.operation_id,
        Operation.fencing_token == claim.token,
        Operation.lease_owner == claim.owner,
    )
    if postgres:
        query = query.with_for_update()
    op = session.scalars(query).first()
    if op is None:
        raise LeaseLost(claim.operation_id)
    return op


def _with_step(steps: list[Any], name: str, **changes: Any) -> list[Any]:
    out = []
    for step in steps:
        if step["name"] == name:
            step = {**step, **changes}
        out.append(step)
    return out


def _iso(value: dt.datetime) -> str:
    return value.isoformat()


class Worker:
    """Claims operations and runs their steps. Many workers may run against one store."""

    def __init__(self, store: Store, settings: Settings, name: str | None = None) -> None:
        self.store = store
        self.settings = settings
        self.owner = name or f"worker-{uuid.uuid4().hex[:12]}"

    # -- claiming -----------------------------------------------------------------------
    def claim(self) -> Claim | None:
        now = utcnow()
        with self.store.session() as session:
            query = (
                select(Operation)
                .where(
                    Operation.status.in_(
                        [OperationStatus.PENDING.value, OperationStatus.RUNNING.value]
                    ),
                    Operation.not_before <= now,
                    or_(Operation.lease_expires_at.is_(None), Operation.lease_expires_at < now),
                )
                .order_by(Operation.not_before, Operation.created_at)
                .limit(1)
            )
            if self.store.postgres:
                query = query.with_for_update(skip_locked=True)
            op = session.scalars(query).first()
            if op is None:
                return None
            op.fencing_token += 1
            op.lease_owner = self.owner
            op.lease_expires_at = now + dt.timedelta(seconds=self.settings.lease_seconds)
            op.status = OperationStatus.RUNNING.value
            op.attempts += 1
            return Claim(op.id, op.fencing_token, self.owner)

    def _renew(self, claim: Claim) -> None:
        with self.store.session() as session:
            result = session.execute(
                update(Operation)
                .where(
                    Operation.id == claim.operation_id,
                    Operation.fencing_token == claim.token,
                    Operation.lease_owner == claim.owner,
                )
                .values(
                    lease_expires_at=utcnow() + dt.timedelta(seconds=self.settings.lease_seconds)
                )
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise LeaseLost(claim.operation_id)

    # -- running --------------------------------------------------------------------------
    def run_once(self) -> bool:
        """Claim one operation and drive it as far as it goes now. False if none was ready."""
        claim = self.claim()
        if claim is None:
            return False
        try:
            self._drive(claim)
        except LeaseLost:
            log.warning("lost the lease of operation %s; another worker has it", claim.operation_id)
        return True

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # the loop must survive a broken store connection
                log.exception("worker %s: unexpected error", self.owner)
                busy = False
            if not busy and not stop.is_set():
                WORK_ARRIVED.wait(self.settings.worker_poll_seconds)
                WORK_ARRIVED.clear()

    def _drive(self, claim: Claim) -> None:
        with self.store.session() as session:
            op = _fence(session, claim, self.store.postgres)
            kind = get_kind(op.kind)
            ctx = StepContext(self.store, self.settings, claim, op, kind)
            steps = list(op.steps)
        done = {s["name"] for s in steps if s["status"] == StepStatus.DONE.value}
        for name, fn in kind.steps:
            if name in done:
                continue
            started = next(s.get("started_at") for s in steps if s["name"] == name)
            if not self._run_step(ctx, kind, name, fn, started):
                return  # released to be polled again later, or failed
        with ctx.transaction() as session:
            op = session.get_one(Operation, claim.operation_id)
            op.status = OperationStatus.SUCCEEDED.value
            op.finished_at = utcnow()
            op.lease_owner = None
            op.lease_expires_at = None

    def _run_step(
        self, ctx: StepContext, kind: OperationKind, name: str, fn: Any, started: str | None
    ) -> bool:
        """Run one step; True when it is done, False when the operation stops here (polled
        again later, or failed)."""
        now = utcnow()
        ctx.step_name = name
        ctx.step_started_at = dt.datetime.fromisoformat(started) if started else now
        with ctx.transaction() as session:
            op = session.get_one(Operation, ctx.operation_id)
            op.steps = _with_step(
                op.steps,
                name,
                status=StepStatus.RUNNING.value,
                started_at=_iso(ctx.step_started_at),
            )
        try:
            with self._heartbeat(ctx.claim):
                fn(ctx)
                self._failpoint(kind, name)
        except NotYet as wait:
            self._release_for_later(ctx, name, wait)
            return False
        except LeaseLost:
            raise
        except PlatformError as err:
            self._fail(ctx, kind, name, err)
            return False  # the operation is over
        except Exception as exc:  # a bug or an untranslated error: fail, never pretend
            log.error(
                "operation %s step %s crashed:\n%s", ctx.operation_id, name, traceback.format_exc()
            )
            self._fail(ctx, kind, name, PlatformError(f"{type(exc).__name__}: {exc}"))
            return False
        with ctx.transaction() as session:
            op = session.get_one(Operation, ctx.operation_id)
            op.steps = _with_step(
                op.steps, name, status=StepStatus.DONE.value, finished_at=_iso(utcnow())
            )
        return True

    def _failpoint(self, kind: OperationKind, name: str) -> None:
        if self.settings.failpoint == f"{kind.name}:{name}":
            log.warning("failpoint %s:%s reached: hanging until killed", kind.name, name)
            print(f"FAILPOINT {kind.name}:{name}", flush=True)
            threading.Event().wait()

    def _release_for_later(self, ctx: StepContext, name: str, wait: NotYet) -> None:
        with ctx.transaction() as session:
            op = session.get_one(Operation, ctx.operation_id)
            op.steps = _with_step(op.steps, name, message=wait.reason[-500:])
            op.not_before = utcnow() + dt.timedelta(seconds=wait.retry_after)
            op.lease_owner = None
            op.lease_expires_at = None

    def _fail(self, ctx: StepContext, kind: OperationKind, name: str, err: PlatformError) -> None:
        with ctx.transaction() as session:
            op = session.get_one(Operation, ctx.operation_id)
            op.steps = _with_step(
                op.steps,
                name,
                status=StepStatus.FAILED.value,
                message=err.message[-500:],
                finished_at=_iso(utcnow()),
            )
            op.status = OperationStatus.FAILED.value
            op.error_code = err.code
            op.error_message = err.message
            op.finished_at = utcnow()
            op.lease_owner = None
            op.lease_expires_at = None
            if kind.on_failure is not None:
                kind.on_failure(session, ctx, err)  # same transaction: all or nothing
        log.info("operation %s failed at %s: %s", ctx.operation_id, name, err.message)

    @contextlib.contextmanager
    def _heartbeat(self, claim: Claim) -> Iterator[None]:
        stop = threading.Event()
        lost = threading.Event()

        def beat() -> None:
            interval = max(self.settings.lease_seconds / 3, 0.05)
            while not stop.wait(interval):
                try:
                    self._renew(claim)
                except LeaseLost:
                    lost.set()
                    return
                except Exception:
                    log.exception("lease renewal of %s failed", claim.operation_id)

        thread = threading.Thread(target=beat, name=f"lease-{claim.operation_id[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
        if lost.is_set():
            raise LeaseLost(claim.operation_id)
