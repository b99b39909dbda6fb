"""The operations engine on SQLite and PostgreSQL: ordered steps, polling, resuming after a
dead worker, fencing, failure, many workers at once, and the lease heartbeat.

Every test registers operation kinds of its own (unique names) whose steps record each
execution, so "ran exactly once" is counted, not assumed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from oneplatform.config import Settings
from oneplatform.errors import Conflict, LeaseLost, NotYet, PlatformError
from oneplatform.ops.engine import StepContext, Worker, enqueue
from oneplatform.ops.kinds import Intent, OperationKind, OperationStatus, StepStatus, register
from oneplatform.ops.service import to_out
from oneplatform.store.db import Store
from oneplatform.store.models import Event, Operation, new_id, utcnow

DONE, PENDING, RUNNING, FAILED = (
    StepStatus.DONE.value,
    StepStatus.PENDING.value,
    StepStatus.RUNNING.value,
    StepStatus.FAILED.value,
)


class WorkerDied(BaseException):
    """Escapes every ``except Exception``: the worker stops as if its process were killed."""


@dataclass
class Call:
    operation_id: str
    step: str
    owner: str


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, ctx: StepContext, step: str) -> None:
        with self.lock:
            self.calls.append(Call(ctx.operation_id, step, ctx.claim.owner))

    def steps(self, operation_id: str | None = None) -> list[str]:
        return [c.step for c in self.calls if operation_id in (None, c.operation_id)]

    def times(self, step: str) -> int:
        return sum(c.step == step for c in self.calls)


Step = Callable[[StepContext], None]


def kind_of(
    recorder: Recorder,
    names: tuple[str, ...] = ("a", "b", "c"),
    body: dict[str, Step] | None = None,
    on_failure: Callable[[Session, StepContext, PlatformError], None] | None = None,
) -> OperationKind:
    """A test-only kind: each step records its execution, then runs ``body[name]`` if any."""
    body = body or {}

    def step(name: str) -> Step:
        def run(ctx: StepContext) -> None:
            recorder.record(ctx, name)
            if name in body:
                body[name](ctx)

        return run

    return register(
        OperationKind(
            name=f"test.{uuid.uuid4().hex[:16]}",
            resource_type="test",
            intent=Intent.ACTION,
            steps=tuple((n, step(n)) for n in names),
            on_failure=on_failure,
        )
    )


def submit(store: Store, kind: OperationKind, params: dict[str, Any] | None = None) -> str:
    with store.session() as session:
        return enqueue(session, kind, new_id(), None, params).id


def load(store: Store, operation_id: str) -> Operation:
    with store.session() as session:
        return session.get_one(Operation, operation_id)


def step_statuses(op: Operation) -> dict[str, str]:
    return {s["name"]: s["status"] for s in op.steps}


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def sleep_until(moment: dt.datetime) -> None:
    time.sleep(max((moment - utcnow()).total_seconds(), 0) + 0.02)


# -- one worker ------------------------------------------------------------------------------
def test_steps_run_in_order_and_the_operation_succeeds(store: Store, settings: Settings) -> None:
    rec = Recorder()
    seen: dict[str, Any] = {}

    def middle(ctx: StepContext) -> None:
        seen["params"] = ctx.params
        ctx.progress("half way")
        seen["during"] = to_out(load(store, ctx.operation_id))

    kind = kind_of(rec, body={"b": middle})
    op_id = submit(store, kind, {"size": 3})
    before = to_out(load(store, op_id))
    assert (before.status, before.progress) == ("PENDING", 0.0)

    worker = Worker(store, settings, name="w1")
    assert worker.run_once() is True
    assert rec.calls == [Call(op_id, n, "w1") for n in ("a", "b", "c")]
    assert seen["params"] == {"size": 3}
    during = seen["during"]
    assert (during.status, during.progress) == ("RUNNING", 0.333)
    assert [s.status for s in during.steps] == [DONE, RUNNING, PENDING]

    op = load(store, op_id)
    out = to_out(op)
    assert (out.status, out.progress, out.error_code) == ("SUCCEEDED", 1.0, None)
    assert [s.status for s in out.steps] == [DONE, DONE, DONE]
    assert out.steps[1].message == "half way"
    for s in op.steps:
        assert s["started_at"] and s["finished_at"]
        assert s["started_at"] <= s["finished_at"]
    assert op.finished_at is not None and op.lease_owner is None and op.attempts == 1
    assert worker.run_once() is False  # nothing left to do
    assert len(rec.calls) == 3


def test_not_yet_polls_later_without_rerunning_done_steps(store: Store, settings: Settings) -> None:
    rec = Recorder()
    started: list[dt.datetime | None] = []

    def poll(ctx: StepContext) -> None:
        started.append(ctx.step_started_at)
        if rec.times("b") == 1:
            raise NotYet("waiting for the backend", retry_after=0.3)

    kind = kind_of(rec, body={"b": poll})
    op_id = submit(store, kind)
    worker, other = Worker(store, settings, "w1"), Worker(store, settings, "w2")

    assert worker.run_once() is True
    op = load(store, op_id)
    assert rec.steps() == ["a", "b"]
    assert op.status == OperationStatus.RUNNING.value
    assert step_statuses(op) == {"a": DONE, "b": RUNNING, "c": PENDING}
    assert op.steps[1]["message"] == "waiting for the backend"
    assert op.lease_owner is None and op.lease_expires_at is None  # not held while waiting
    assert op.not_before > utcnow()
    assert to_out(op).progress == 0.333
    # Not due yet: nobody takes it.
    assert worker.run_once() is False
    assert other.run_once() is False

    sleep_until(op.not_before)
    assert other.run_once() is True
    assert rec.steps() == ["a", "b", "b", "c"]
    assert [c.owner for c in rec.calls] == ["w1", "w1", "w2", "w2"]
    # The step keeps the time it first started, so it can measure its own timeout.
    assert started[0] is not None and started[0] == started[1]
    op = load(store, op_id)
    assert (op.status, op.attempts) == ("SUCCEEDED", 2)
    assert to_out(op).progress == 1.0


def test_a_dead_worker_is_resumed_at_the_first_unfinished_step(
    store: Store, settings: Settings
) -> None:
    settings = settings.model_copy(update={"lease_seconds": 0.3})
    rec = Recorder()

    def die_once(ctx: StepContext) -> None:
        if ctx.claim.owner == "A":
            raise WorkerDied

    op_id = submit(store, kind_of(rec, body={"b": die_once}))
    a, b = Worker(store, settings, "A"), Worker(store, settings, "B")

    with pytest.raises(WorkerDied):
        a.run_once()
    op = load(store, op_id)
    assert step_statuses(op) == {"a": DONE, "b": RUNNING, "c": PENDING}
    assert (op.status, op.lease_owner) == ("RUNNING", "A")
    assert op.lease_expires_at is not None
    assert b.run_once() is False  # A's lease still runs

    sleep_until(op.lease_expires_at)
    assert b.run_once() is True
    assert [(c.step, c.owner) for c in rec.calls] == [
        ("a", "A"),
        ("b", "A"),
        ("b", "B"),
        ("c", "B"),
    ]
    assert rec.times("a") == 1
    op = load(store, op_id)
    assert (op.status, op.attempts, op.fencing_token) == ("SUCCEEDED", 2, 2)
    assert step_statuses(op) == {"a": DONE, "b": DONE, "c": DONE}


# -- fencing ---------------------------------------------------------------------------------
def _expire_lease(store: Store, op_id: str) -> None:
    with store.session() as session:
        session.execute(
            update(Operation)
            .where(Operation.id == op_id)
            .values(lease_expires_at=utcnow() - dt.timedelta(seconds=1))
        )


def _snapshot(store: Store, op_id: str) -> tuple[Any, ...]:
    op = load(store, op_id)
    return (op.status, op.steps, op.params, op.lease_owner, op.fencing_token, op.error_code)


def _event_count(store: Store) -> int:
    with store.session() as session:
        return int(session.scalar(select(func.count()).select_from(Event)) or 0)


def test_a_worker_that_lost_its_claim_cannot_write(store: Store, settings: Settings) -> None:
    rec = Recorder()
    kind = kind_of(rec)
    op_id = submit(store, kind, {"owner": "nobody"})
    a, b = Worker(store, settings, "A"), Worker(store, settings, "B")

    claim_a = a.claim()
    assert claim_a is not None
    ctx_a = StepContext(store, settings, claim_a, load(store, op_id), kind)
    ctx_a.step_name = "a"
    with ctx_a.transaction() as session:  # while A holds it, A may write
        session.get_one(Operation, op_id).params = {"owner": "A"}

    _expire_lease(store, op_id)  # A paused past its lease
    claim_b = b.claim()
    assert claim_b is not None and claim_b.token == claim_a.token + 1
    before = _snapshot(store, op_id)
    assert before[2:5] == ({"owner": "A"}, "B", claim_b.token)

    with pytest.raises(LeaseLost), ctx_a.transaction() as session:
        session.get_one(Operation, op_id).params = {"owner": "A again"}
        session.add(Event(resource_type="test", resource_id=op_id, to_status="X"))
    with pytest.raises(LeaseLost):
        ctx_a.progress("A is still here")
    with pytest.raises(LeaseLost):
        a._renew(claim_a)
    with pytest.raises(LeaseLost):
        a._drive(claim_a)
    assert rec.calls == []  # A ran no step
    assert _snapshot(store, op_id) == before
    assert _event_count(store) == 0

    # B, the holder, writes fine.
    ctx_b = StepContext(store, settings, claim_b, load(store, op_id), kind)
    with ctx_b.transaction() as session:
        session.get_one(Operation, op_id).params = {"owner": "B"}
    assert load(store, op_id).params == {"owner": "B"}


def test_a_stalled_step_loses_to_the_worker_that_took_over(
    store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings.model_copy(update={"lease_seconds": 0.3})
    rec = Recorder()
    entered, release = threading.Event(), threading.Event()
    a_write: list[BaseException] = []

    def slow(ctx: StepContext) -> None:
        if ctx.claim.owner != "A":
            return
        entered.set()
        assert release.wait(10)
        try:
            with ctx.transaction() as session:
                session.add(Event(resource_type="test", resource_id=ctx.resource_id, to_status="A"))
        except LeaseLost as err:
            a_write.append(err)
            raise

    op_id = submit(store, kind_of(rec, body={"b": slow}))
    a, b = Worker(store, settings, "A"), Worker(store, settings, "B")
    # A stalls without renewing (a paused process): switch its heartbeat off.
    monkeypatch.setattr(a, "_heartbeat", lambda claim: contextlib.nullcontext())
    results: list[bool] = []
    thread = threading.Thread(target=lambda: results.append(a.run_once()))
    thread.start()
    try:
        assert entered.wait(10)
        wait_until(b.run_once, timeout=5, what="B to take over the expired lease")
    finally:
        release.set()
        thread.join(10)
    assert results == [True]  # A noticed the lost lease and gave up quietly
    assert len(a_write) == 1
    assert _event_count(store) == 0
    assert [(c.step, c.owner) for c in rec.calls] == [
        ("a", "A"),
        ("b", "A"),
        ("b", "B"),
        ("c", "B"),
    ]
    op = load(store, op_id)
    assert (op.status, op.lease_owner, op.fencing_token) == ("SUCCEEDED", None, 2)
    assert step_statuses(op) == {"a": DONE, "b": DONE, "c": DONE}


# -- failure ---------------------------------------------------------------------------------
def test_a_platform_error_fails_the_operation_and_calls_on_failure(
    store: Store, settings: Settings
) -> None:
    rec = Recorder()
    failures: list[tuple[str, str, str]] = []

    def refuse(ctx: StepContext) -> None:
        raise Conflict("the backend said no", code="test_refused")

    def on_failure(session: Session, ctx: StepContext, err: PlatformError) -> None:
        # Same transaction as the failure record: it already reads FAILED here.
        status = session.scalars(
            select(Operation.status).where(Operation.id == ctx.operation_id)
        ).one()
        failures.append((status, err.code, ctx.step_name))
        session.add(Event(resource_type="test", resource_id=ctx.resource_id, to_status="ERROR"))

    op_id = submit(store, kind_of(rec, body={"b": refuse}, on_failure=on_failure))
    worker = Worker(store, settings, "w1")
    assert worker.run_once() is True
    assert rec.steps() == ["a", "b"]  # c never runs
    assert failures == [("FAILED", "test_refused", "b")]
    op = load(store, op_id)
    out = to_out(op)
    assert (out.status, out.error_code, out.error_message) == (
        "FAILED",
        "test_refused",
        "the backend said no",
    )
    assert out.progress == 0.333
    assert step_statuses(op) == {"a": DONE, "b": FAILED, "c": PENDING}
    assert op.steps[1]["message"] == "the backend said no"
    assert op.finished_at is not None and op.lease_owner is None
    assert _event_count(store) == 1
    assert worker.run_once() is False  # a failed operation is final: never retried


def test_on_failure_shares_the_failure_transaction(store: Store, settings: Settings) -> None:
    """If on_failure breaks, the failure record is rolled back with it: all or nothing."""

    def refuse(ctx: StepContext) -> None:
        raise PlatformError("nope")

    def broken(session: Session, ctx: StepContext, err: PlatformError) -> None:
        session.add(Event(resource_type="test", resource_id=ctx.resource_id, to_status="ERROR"))
        session.flush()
        raise RuntimeError("cleanup bug")

    op_id = submit(store, kind_of(Recorder(), body={"a": refuse}, on_failure=broken))
    with pytest.raises(RuntimeError, match="cleanup bug"):
        Worker(store, settings, "w1").run_once()
    op = load(store, op_id)
    assert op.status == OperationStatus.RUNNING.value
    assert (op.error_code, op.finished_at) == (None, None)
    assert step_statuses(op)["a"] == RUNNING
    assert _event_count(store) == 0


def test_an_unexpected_exception_fails_the_operation(store: Store, settings: Settings) -> None:
    rec = Recorder()
    got: list[PlatformError] = []

    def crash(ctx: StepContext) -> None:
        raise ValueError("boom")

    op_id = submit(
        store,
        kind_of(rec, body={"a": crash}, on_failure=lambda s, ctx, err: got.append(err)),
    )
    worker = Worker(store, settings, "w1")
    assert worker.run_once() is True
    op = load(store, op_id)
    assert op.status == OperationStatus.FAILED.value
    assert op.error_code == "internal_error"
    assert op.error_message == "ValueError: boom"
    assert step_statuses(op) == {"a": FAILED, "b": PENDING, "c": PENDING}
    assert rec.steps() == ["a"]
    assert [e.message for e in got] == ["ValueError: boom"]
    assert worker.run_once() is False
    assert load(store, op_id).status == OperationStatus.FAILED.value


# -- many workers ----------------------------------------------------------------------------
def test_simultaneous_claims_never_hand_out_one_operation_twice(
    store: Store, settings: Settings
) -> None:
    kind = kind_of(Recorder())
    ops = {submit(store, kind) for _ in range(8)}
    barrier = threading.Barrier(len(ops))
    claims: list[Any] = []

    def claim(i: int) -> None:
        worker = Worker(store, settings, f"w{i}")
        barrier.wait()
        claims.append(worker.claim())

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(ops))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    claimed = [c.operation_id for c in claims if c is not None]
    assert sorted(claimed) == sorted(ops)  # each thread got one, and no two the same
    with store.session() as session:
        rows = session.execute(select(Operation.id, Operation.lease_owner)).all()
        owners = {op_id: owner for op_id, owner in rows}
    assert {c.operation_id: c.owner for c in claims} == owners


def test_concurrent_workers_run_every_step_exactly_once(store: Store, settings: Settings) -> None:
    # A long lease: nothing here should ever wait for one to expire.
    settings = settings.model_copy(update={"lease_seconds": 10.0})
    rec = Recorder()
    polled: set[str] = set()

    def maybe_wait(ctx: StepContext) -> None:
        time.sleep(0.005)
        if ctx.params["poll"] and ctx.operation_id not in polled:
            polled.add(ctx.operation_id)
            raise NotYet("once more", retry_after=0.05)

    def work(ctx: StepContext) -> None:
        time.sleep(0.005)

    kind = kind_of(rec, body={"a": work, "b": maybe_wait, "c": work})
    ops = [submit(store, kind, {"poll": i % 3 == 0}) for i in range(20)]
    stop = threading.Event()
    workers = [Worker(store, settings, f"w{i}") for i in range(4)]
    threads = [threading.Thread(target=w.run_forever, args=(stop,)) for w in workers]
    for t in threads:
        t.start()

    def all_final() -> bool:
        with store.session() as session:
            statuses = session.scalars(select(Operation.status)).all()
        return all(OperationStatus(s).is_final for s in statuses)

    try:
        wait_until(all_final, timeout=30, what="all operations to finish")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not any(t.is_alive() for t in threads)

    counts = Counter((c.operation_id, c.step) for c in rec.calls)
    for i, op_id in enumerate(ops):
        polls = 2 if i % 3 == 0 else 1
        assert (counts[op_id, "a"], counts[op_id, "b"], counts[op_id, "c"]) == (1, polls, 1)
        op = load(store, op_id)
        assert (op.status, op.attempts) == ("SUCCEEDED", polls), op_id
        assert rec.steps(op_id) == ["a", *["b"] * polls, "c"]
    assert len(rec.calls) == 20 * 3 + 7
    assert len({c.owner for c in rec.calls}) > 1  # the work really was shared


# -- the heartbeat ---------------------------------------------------------------------------
def test_the_heartbeat_keeps_a_long_step_from_being_stolen(
    store: Store, settings: Settings
) -> None:
    # a lease long enough that a loaded machine (two test workers beside TCG guests) does not
    # starve the heartbeat past it; the step outlives it three times over
    settings = settings.model_copy(update={"lease_seconds": 1.0})
    rec = Recorder()
    expiries: list[dt.datetime] = []

    def long_step(ctx: StepContext) -> None:
        end = time.monotonic() + 3 * settings.lease_seconds
        while time.monotonic() < end:
            expiry = load(store, ctx.operation_id).lease_expires_at
            assert expiry is not None
            expiries.append(expiry)
            time.sleep(0.05)

    op_id = submit(store, kind_of(rec, names=("long", "after"), body={"long": long_step}))
    a, b = Worker(store, settings, "A"), Worker(store, settings, "B")
    thread = threading.Thread(target=a.run_once)
    thread.start()
    stolen = 0
    try:
        wait_until(lambda: rec.times("long") == 1, timeout=5, what="A to start the step")
        while thread.is_alive():
            stolen += b.run_once()
            time.sleep(0.02)
    finally:
        thread.join(10)
    assert stolen == 0
    assert [(c.step, c.owner) for c in rec.calls] == [("long", "A"), ("after", "A")]
    op = load(store, op_id)
    assert (op.status, op.attempts, op.fencing_token) == ("SUCCEEDED", 1, 1)
    # The lease really was renewed past its first expiry, more than once.
    assert len(set(expiries)) >= 3
    assert max(expiries) - min(expiries) > dt.timedelta(seconds=settings.lease_seconds)
