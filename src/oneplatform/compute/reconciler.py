"""Self-healing: compare what the platform wants of every instance with what its backend
reports, and repair the difference.

An ``ACTIVE`` instance must run. When its backend reports it stopped or crashed (a
``podman kill``, a killed QEMU, a node powered off behind the platform's back), or has no
object for it at all (``podman rm -f``, ``virsh undefine``), the instance goes to ``REPAIR``
and an ``instance.repair`` operation brings it back: it starts the backend, or recreates it
from the instance's spec on its own data volumes, retrying with backoff and giving up with
an ERROR that says why. Instances an operation is driving, and those a user stopped, are
left alone.

The survey runs every ``reconcile_interval_seconds`` in the process that holds the
reconciler's lease (ops/leases.py), at once when it starts (after a crash or a reboot every
ACTIVE instance comes back without a user action), and for one instance when a health
check cannot reach what runs on it. Asking for a repair is one transaction that checks the
instance is still ACTIVE and has no open operation, so surveys in several processes never
start two repairs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneplatform.compute.hosts import driver_of
from oneplatform.compute.operations import INSTANCE_REPAIR
from oneplatform.compute.states import INSTANCES, InstanceStatus
from oneplatform.config import Settings
from oneplatform.errors import PlatformError
from oneplatform.ops.engine import enqueue
from oneplatform.ops.kinds import OPEN
from oneplatform.schemas.compute import PowerState
from oneplatform.store.db import Store
from oneplatform.store.models import Host, Instance, Operation

log = logging.getLogger(__name__)
BROKEN = (PowerState.STOPPED, PowerState.CRASHED)


@dataclass(frozen=True)
class Finding:
    instance_id: str
    reason: str | None  # why it needs a repair; None when it is fine
    power: PowerState | None = None


def survey(store: Store, settings: Settings, only: Iterable[str] | None = None) -> list[Finding]:
    """Ask each ACTIVE instance's backend about it (in parallel, outside any transaction)."""
    with store.session() as session:
        query = select(Instance.id).where(
            Instance.status == InstanceStatus.ACTIVE.value, Instance.host_id.is_not(None)
        )
        if only is not None:
            query = query.where(Instance.id.in_(list(only)))
        ids = list(session.scalars(query))
    if not ids:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(ids))) as pool:
        return list(pool.map(lambda i: _look(store, settings, i), ids))


def _look(store: Store, settings: Settings, instance_id: str) -> Finding:
    try:
        with store.session() as session:
            instance = session.get_one(Instance, instance_id)
            driver = driver_of(session, settings, session.get_one(Host, instance.host_id))
        backend = driver.get(instance_id)
    except PlatformError as err:  # the backend itself is unreachable: nothing to repair here
        log.warning("reconciler: cannot ask the backend of %s: %s", instance_id, err.message)
        return Finding(instance_id, None)
    if backend is None:
        return Finding(instance_id, "its backend object is gone")
    if backend.power_state in BROKEN:
        return Finding(instance_id, f"its backend is {backend.backend_state}", backend.power_state)
    return Finding(instance_id, None, backend.power_state)


RECOVERABLE = frozenset(
    {InstanceStatus.ACTIVE, InstanceStatus.ERROR, InstanceStatus.SHUTOFF, InstanceStatus.UNKNOWN}
)


# Whoever owns an instance may hold its repairs: a service with a better answer than
# restarting it (a database group fails over to a replica instead). A hold answers why.
Hold = Callable[[Session, str], str | None]
HOLDS: list[Hold] = []


def register_hold(hold: Hold) -> None:
    HOLDS.append(hold)


def request_repair(
    store: Store,
    instance_id: str,
    reason: str,
    allowed: frozenset[InstanceStatus] = frozenset({InstanceStatus.ACTIVE}),
) -> str | None:
    """Start a repair unless the instance is not in ``allowed`` (ACTIVE: the reconciler;
    any :data:`RECOVERABLE` state: a user's restart) or something drives it; returns the
    operation id."""
    with store.session() as session:
        instance = session.get_one(Instance, instance_id, with_for_update=store.postgres)
        if INSTANCES.state_of(instance) not in allowed:
            return None
        for hold in HOLDS:
            why = hold(session, instance_id)
            if why is not None:
                log.info("not repairing instance %s: %s", instance_id, why)
                return None
        busy = session.scalars(
            select(Operation.id).where(
                Operation.resource_id == instance_id, Operation.status.in_(OPEN)
            )
        ).first()
        if busy is not None:
            return None
        INSTANCES.move(session, instance, InstanceStatus.REPAIR, f"repairing: {reason}")
        return enqueue(session, INSTANCE_REPAIR, instance.id, instance.project_id).id


def reconcile_once(
    store: Store, settings: Settings, only: Iterable[str] | None = None
) -> list[str]:
    """One survey and its repairs; returns the repair operations started."""
    started = []
    for finding in survey(store, settings, only):
        if finding.reason is None:
            _record_power(store, finding)
            continue
        op_id = request_repair(store, finding.instance_id, finding.reason)
        if op_id is not None:
            log.info("repairing instance %s: %s", finding.instance_id, finding.reason)
            started.append(op_id)
    return started


def _record_power(store: Store, finding: Finding) -> None:
    if finding.power is None:
        return
    with store.session() as session:
        instance = session.get_one(Instance, finding.instance_id)
        if instance.power_state != finding.power.value:
            instance.power_state = finding.power.value


def run_reconciler(store: Store, settings: Settings, stop: threading.Event) -> None:
    """Survey at once, then every ``reconcile_interval_seconds`` until ``stop``."""
    while not stop.is_set():
        try:
            reconcile_once(store, settings)
        except Exception:  # the loop must outlive a broken store connection
            log.exception("reconciler round failed")
        stop.wait(settings.reconcile_interval_seconds)
