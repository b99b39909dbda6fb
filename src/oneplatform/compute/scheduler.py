"""Placement: filters then weighers, in one SQL query, and a conditional claim.

The caller runs :func:`select_host` inside the transaction that inserts the instance.

What a host's live instances use is on the host's own row (``used_vcpus``, ``used_ram_mb``,
``used_disk_gb``, ``used_instances``), kept equal to their sums by triggers on the instances
table in the same transaction as every change (migration 0010), so it cannot drift from the
truth and no placement sums the instances table.

1. **Candidates** come from one query: the ``WINDOW`` hosts of the flavor's compute type
   that pass every filter and have the most free RAM (then vCPUs), read in that order off an
   index; the failure-domain weigher then orders them (stably) and the best few are tried.
2. **Claim**, best candidate first: ``UPDATE hosts SET generation = generation + 1 WHERE id =
   :id AND <the flavor still fits>``. On PostgreSQL a row another transaction is changing is
   waited for and the condition is then checked against its committed values, so two
   placements can never both take the last room; inserting the instance then adds to the
   row (the trigger) while this transaction holds it. A first pass skips hosts another
   placement holds at that moment (``FOR UPDATE SKIP LOCKED``), so concurrent placements
   fan out over the next-best hosts instead of queueing for the best one; a second pass
   waits for them. Only the claimed host's row is locked. On SQLite every transaction is
   ``BEGIN IMMEDIATE`` and so already alone.

When nothing passes, the refusal names the filter that removed the last hosts (computed
over every host: only on that slow path).

Failure domains: a host has a ``zone`` and a ``rack``. With ``spread_project``, the weigher
prefers, among the window, the zone, then the rack, holding the fewest of the project's live
instances (later also a database's replicas), and only then the most free RAM and
vCPUs. With up to ``WINDOW`` hosts of a compute type that order is exact over all of them;
beyond, it is exact over the roomiest ``WINDOW`` (a zone that holds none of them is not
looked for further down): the cost of a placement stays flat with the number of hosts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ColumnElement, Integer, Select, bindparam, func, select, update
from sqlalchemy.orm import Session

from oneplatform.compute.types import spec_for
from oneplatform.errors import Conflict, NoValidHost
from oneplatform.store.models import Flavor, Host, Instance, Pool

WINDOW = 64  # hosts with the most free RAM the failure-domain weigher chooses among
CANDIDATES = 8  # of those, how many a placement tries to claim before querying again
ATTEMPTS = 3  # candidate queries before a placement that keeps losing races gives up


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


# The filters, in the order a refusal names them. :func:`_candidates` says the same in SQL;
# a unit test holds the two to the same answers.
FILTERS: tuple[Filter, ...] = (
    Filter("compute_type", lambda h, f: h.pool.compute_type == f.compute_type),
    # A project's own flavor (a cluster's) goes to its pool only; any other flavor never
    # goes to a host that belongs to a project.
    Filter(
        "pool",
        lambda h, f: h.host.pool_id == f.pool_id if f.pool_id else h.host.project_id is None,
    ),
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


def host_states(
    session: Session, lock: bool, host_ids: Sequence[str] | None = None
) -> list[HostState]:
    """Every host (or those of ``host_ids``) with the capacity its live instances use."""
    query = (
        select(Host, Pool)
        .join(Pool, Host.pool_id == Pool.id)
        .order_by(Host.id)
        .execution_options(populate_existing=True)  # the triggers change rows behind the ORM
    )
    if host_ids is not None:
        query = query.where(Host.id.in_(host_ids))
    if lock:
        query = query.with_for_update(of=Host)
    rows = cast(list[tuple[Host, Pool]], session.execute(query).all())
    return [
        HostState(h, p, h.used_vcpus, h.used_ram_mb, h.used_disk_gb, h.used_instances)
        for h, p in rows
    ]


# The weighers' order after the failure domains: most free RAM, then most free vCPUs. An
# index of migration 0010 holds the hosts in this order, so the window below is read off it.
FREE_RAM = Host.ram_mb * Host.ram_allocation_ratio - Host.used_ram_mb
FREE_VCPUS = Host.vcpus * Host.cpu_allocation_ratio - Host.used_vcpus

# The statements below are built once, with the flavor's numbers as bound parameters:
# building and compiling them per placement cost more than running them.


def _fits(whole_host: bool) -> list[ColumnElement[bool]]:
    """The capacity filters in SQL, over a host row's own columns."""
    conditions = [
        Host.enabled.is_(True),
        bindparam("want_vcpus", type_=Integer) <= FREE_VCPUS,
        bindparam("want_ram_mb", type_=Integer) <= FREE_RAM,
        bindparam("want_disk_gb", type_=Integer) <= Host.disk_gb - Host.used_disk_gb,
    ]
    if whole_host:
        conditions.append(Host.used_instances == 0)
    return conditions


@functools.cache
def _window_statement(
    whole_host: bool, limited: bool, pooled: bool
) -> Select[tuple[str, str, str, Any]]:
    owner = Host.pool_id == bindparam("pool_id") if pooled else Host.project_id.is_(None)
    query = (
        select(Host.id, Host.zone, Host.rack, Host.traits)
        .where(Host.compute_type == bindparam("compute_type"), owner, *_fits(whole_host))
        .order_by(FREE_RAM.desc(), FREE_VCPUS.desc(), Host.id)
    )
    return query.limit(bindparam("window", type_=Integer)) if limited else query


@functools.cache
def _claim_statement(whole_host: bool, skip_locked: bool) -> Any:
    """Bump the generation of the host if the flavor still fits there. With ``skip_locked``
    a host another transaction holds is passed over at once instead of waited for."""
    target: Any = bindparam("host_id")
    if skip_locked:
        target = (
            select(Host.id)
            .where(Host.id == target)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
    return (
        update(Host)
        .where(Host.id == target, *_fits(whole_host))
        .values(generation=Host.generation + 1)
        .returning(Host)
        .execution_options(populate_existing=True)
    )


_SPREAD = (
    select(Host.zone, Host.rack, func.count(Instance.id))
    .join(Instance, Instance.host_id == Host.id)
    .where(Instance.deleted_at.is_(None), Instance.project_id == bindparam("project_id"))
    .group_by(Host.zone, Host.rack)
)


def _wants(flavor: Flavor, extra_disk_gb: int) -> dict[str, Any]:
    """The parameters of :func:`_fits`. Only these go to the claim: an UPDATE takes any
    other name that is a column as a value to SET."""
    return {
        "want_vcpus": flavor.vcpus,
        "want_ram_mb": flavor.ram_mb,
        "want_disk_gb": flavor.disk_gb + extra_disk_gb,
    }


@dataclass(frozen=True)
class Candidate:
    host_id: str
    domain_weight: tuple[int, int]  # the project's instances in its zone, in its rack


def _spread_counts(
    session: Session, project_id: str
) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """The project's live instances per zone and per (zone, rack)."""
    zones: dict[str, int] = {}
    racks: dict[tuple[str, str], int] = {}
    rows = session.connection().execute(_SPREAD, {"project_id": project_id}).all()
    for zone, rack, count in rows:
        zones[zone] = zones.get(zone, 0) + int(count)
        racks[(zone, rack)] = int(count)
    return zones, racks


def _candidates(
    session: Session, flavor: Flavor, extra_disk_gb: int, spread_project: str | None
) -> list[Candidate]:
    """The hosts that pass every filter, best first: of the ``WINDOW`` with the most free
    RAM (then vCPUs), those in the failure domains holding the fewest of the project's
    instances."""
    wanted = set(flavor.traits or ())
    whole_host = spec_for(flavor.compute_type).whole_host
    query = _window_statement(whole_host, limited=not wanted, pooled=flavor.pool_id is not None)
    params = {"compute_type": flavor.compute_type, "window": WINDOW}
    if flavor.pool_id is not None:
        params["pool_id"] = flavor.pool_id
    found = cast(
        list[tuple[str, str, str, list[str]]],
        # Core rows, not ORM ones: half the Python a placement spends is the ORM's.
        session.connection().execute(query, _wants(flavor, extra_disk_gb) | params).all(),
    )
    rows = [row for row in found if wanted <= set(row[3] or ())][:WINDOW]
    zones, racks = _spread_counts(session, spread_project) if spread_project and rows else ({}, {})
    weighed = [
        Candidate(host_id, (zones.get(zone, 0), racks.get((zone, rack), 0)))
        for host_id, zone, rack, _traits in rows
    ]
    weighed.sort(key=lambda c: c.domain_weight)  # stable: RAM order within a weight
    return weighed[:CANDIDATES]


def _claim(
    session: Session, candidate: Candidate, flavor: Flavor, extra_disk_gb: int, wait: bool
) -> Host | None:
    """Take ``candidate`` if the flavor still fits there: bump its generation (the row then
    stays locked until this transaction ends). None if it no longer fits or, without
    ``wait``, if another placement holds it right now (PostgreSQL's ``SKIP LOCKED``)."""
    params = _wants(flavor, extra_disk_gb) | {"host_id": candidate.host_id}
    statement = _claim_statement(spec_for(flavor.compute_type).whole_host, not wait)
    claimed: Host | None = session.scalars(statement, params).first()
    return claimed


def _refusal(session: Session, flavor: Flavor, extra_disk_gb: int) -> NoValidHost:
    """Which filter removed the last hosts, over every host."""
    candidates = host_states(session, lock=False)
    if not candidates:
        return NoValidHost("no hosts are registered")
    for state in candidates:
        state.used_disk_gb += extra_disk_gb
    for flt in FILTERS:
        remaining = [h for h in candidates if flt.passes(h, flavor)]
        if not remaining:
            return NoValidHost(
                f"no host can take flavor {flavor.name!r}: "
                f"{len(candidates)} host(s) left before the {flt.name!r} filter, none after",
                filter=flt.name,
            )
        candidates = remaining
    # Every filter passes now: the hosts that fitted were all taken while we looked.
    return NoValidHost(
        f"no host can take flavor {flavor.name!r}: concurrent placements took the last room",
        filter="claim",
    )


def select_host(
    session: Session,
    flavor: Flavor,
    extra_disk_gb: int = 0,
    spread_project: str | None = None,
) -> Host:
    """Claim the best host for ``flavor`` (plus ``extra_disk_gb`` of volumes) in the
    session's transaction, or raise NoValidHost saying which filter removed the last hosts.

    ``spread_project``: prefer the failure domains holding the fewest of that project's
    live instances.
    """
    for _ in range(ATTEMPTS):
        candidates = _candidates(session, flavor, extra_disk_gb, spread_project)
        if not candidates:
            raise _refusal(session, flavor, extra_disk_gb)
        for wait in (False, True):
            for candidate in candidates:
                host = _claim(session, candidate, flavor, extra_disk_gb, wait)
                if host is not None:
                    return host
    raise Conflict(
        f"placing flavor {flavor.name!r}: concurrent placements took the hosts it fitted "
        f"{ATTEMPTS} times in a row; try again",
        code="placement_busy",
    )


def fits_in_place(
    session: Session, lock: bool, host_id: str, flavor: Flavor, freed: tuple[int, int, int]
) -> Host:
    """Whether an instance already on ``host_id`` fits there at ``flavor``'s size once it
    gives back ``freed`` (vCPUs, RAM, disk): an in-place resize. Locks the host (PostgreSQL)
    until the caller's transaction changes the instance's size (the trigger then updates
    the host's row) and ends."""
    (state,) = host_states(session, lock, [host_id])
    state.used_vcpus -= freed[0]
    state.used_ram_mb -= freed[1]
    state.used_disk_gb -= freed[2]
    state.instances -= 1
    for flt in FILTERS:
        if not flt.passes(state, flavor):
            raise NoValidHost(
                f"host {state.host.name!r} cannot take flavor {flavor.name!r}: "
                f"the {flt.name!r} filter refuses it",
                filter=flt.name,
            )
    state.host.generation += 1
    return state.host
