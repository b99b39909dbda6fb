"""Placement: filters then a weigher, over hosts locked against concurrent placements.

The caller runs :func:`select_host` inside the transaction that inserts the instance. On
PostgreSQL the candidate hosts are locked ``FOR UPDATE`` (in id order, so two schedulers never
deadlock); on SQLite the transaction is ``BEGIN IMMEDIATE`` and so already alone. Capacity in
use is summed from the live instances on each host, so it cannot drift from the truth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from oneplatform.compute.types import spec_for
from oneplatform.errors import NoValidHost
from oneplatform.store.models import Flavor, Host, Instance, Pool


@dataclass
class HostState:
    host: Host
    pool: Pool
    used_vcpus: int
    used_ram_mb: int
    used_disk_gb: int
    instances: int = 0

    @property
    def free_vcpus(self) -> float:
        return self.host.vcpus * self.host.cpu_allocation_ratio - self.used_vcpus

    @property
    def free_ram_mb(self) -> float:
        return self.host.ram_mb * self.host.ram_allocation_ratio - self.used_ram_mb

    @property
    def free_disk_gb(self) -> int:
        return self.host.disk_gb - self.used_disk_gb


@dataclass(frozen=True)
class Filter:
    name: str
    passes: Callable[[HostState, Flavor], bool]


FILTERS: tuple[Filter, ...] = (
    Filter("compute_type", lambda h, f: h.pool.compute_type == f.compute_type),
    Filter("enabled", lambda h, f: h.host.enabled),
    Filter("vcpus", lambda h, f: h.free_vcpus >= f.vcpus),
    Filter("ram", lambda h, f: h.free_ram_mb >= f.ram_mb),
    Filter("disk", lambda h, f: h.free_disk_gb >= f.disk_gb),
    Filter("traits", lambda h, f: set(f.traits or ()) <= set(h.host.traits or ())),
    # A host that is one unit (a bare-metal node) takes nothing where something already is.
    Filter(
        "whole_host",
        lambda h, f: h.instances == 0 or not spec_for(h.pool.compute_type).whole_host,
    ),
)


def weigh(state: HostState) -> tuple[float, float]:
    """Spread: prefer the host with the most free RAM, then (on a tie) the most free vCPUs."""
    return (state.free_ram_mb, state.free_vcpus)


def host_states(session: Session, lock: bool) -> list[HostState]:
    query = select(Host, Pool).join(Pool, Host.pool_id == Pool.id).order_by(Host.id)
    if lock:
        query = query.with_for_update(of=Host)
    rows = session.execute(query).all()
    usage = {
        host_id: (v or 0, r or 0, d or 0, n)
        for host_id, v, r, d, n in session.execute(
            select(
                Instance.host_id,
                func.sum(Instance.vcpus),
                func.sum(Instance.ram_mb),
                func.sum(Instance.disk_gb),
                func.count(Instance.id),
            )
            .where(Instance.deleted_at.is_(None), Instance.host_id.is_not(None))
            .group_by(Instance.host_id)
        ).all()
    }
    return [HostState(host, pool, *usage.get(host.id, (0, 0, 0, 0))) for host, pool in rows]


def select_host(
    session: Session,
    flavor: Flavor,
    lock: bool,
    filters: Sequence[Filter] = FILTERS,
    extra_disk_gb: int = 0,
    only_host: str | None = None,
    freed: tuple[int, int, int] = (0, 0, 0),
) -> Host:
    """The best host for ``flavor`` (plus ``extra_disk_gb`` of volumes), or NoValidHost
    saying which filter removed the last hosts.

    ``only_host`` with ``freed`` (vCPUs, RAM, disk an instance gives back) checks whether an
    instance already on that host fits there at ``flavor``'s size (an in-place resize).
    """
    candidates = host_states(session, lock)
    if only_host is not None:
        candidates = [c for c in candidates if c.host.id == only_host]
    for state in candidates:
        state.used_disk_gb += extra_disk_gb
        if only_host is not None:
            state.used_vcpus -= freed[0]
            state.used_ram_mb -= freed[1]
            state.used_disk_gb -= freed[2]
            state.instances -= 1
    if not candidates:
        raise NoValidHost("no hosts are registered")
    for flt in filters:
        remaining = [h for h in candidates if flt.passes(h, flavor)]
        if not remaining:
            raise NoValidHost(
                f"no host can take flavor {flavor.name!r}: "
                f"{len(candidates)} host(s) left before the {flt.name!r} filter, none after",
                filter=flt.name,
            )
        candidates = remaining
    best = max(candidates, key=weigh)
    best.host.generation += 1  # a change counter: every placement bumps it
    return best.host
