"""Placement: each filter, the weigher, live capacity, and no overcommit under concurrency."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from oneplatform.compute import instances as service
from oneplatform.compute import scheduler
from oneplatform.compute.scheduler import FILTERS, host_states, select_host
from oneplatform.errors import NoValidHost
from oneplatform.ops.kinds import OperationStatus
from oneplatform.schemas.instances import InstanceCreate
from oneplatform.store.db import Store
from oneplatform.store.models import (
    Event,
    Flavor,
    Host,
    Instance,
    Operation,
    PortAllocation,
    Project,
    utcnow,
)
from tests.factories import (
    caller_for,
    make_flavor,
    make_host,
    make_instance,
    make_pool,
    make_project,
    make_ready_image,
)


def _owned(host: Host, project: Project) -> None:
    """``host`` becomes a host of a pool of ``project``'s own (a cluster's node)."""
    host.project_id = project.id


def _place(store: Store, flavor: Flavor) -> Host:
    with store.session() as session:
        return select_host(session, session.get_one(Flavor, flavor.id))


def _refused_by(store: Store, flavor: Flavor) -> str:
    with pytest.raises(NoValidHost) as info:
        _place(store, flavor)
    assert info.value.status == 409
    assert info.value.code == "no_valid_host"
    name = str(info.value.details["filter"])
    assert repr(name) in info.value.message
    return name


# Each case: a host that fails exactly one filter for a 2-vCPU/2 GiB/20 GB flavor.
FILTER_CASES: dict[str, Callable[[Session], None]] = {
    "compute_type": lambda s: make_host(s, make_pool(s, "vm")),
    "pool": lambda s: _owned(make_host(s), make_project(s)),  # a cluster's node
    "enabled": lambda s: make_host(s, enabled=False),
    "vcpus": lambda s: make_host(s, vcpus=1, cpu_allocation_ratio=1.5),  # 1.5 < 2
    "ram": lambda s: make_host(s, ram_mb=1024, ram_allocation_ratio=1.5),  # 1536 < 2048
    "disk": lambda s: make_host(s, disk_gb=19),
    "traits": lambda s: make_host(s, traits=["ssd"]),  # flavor wants ssd and nvme
}


def test_every_filter_has_a_case() -> None:
    # whole_host needs a bare-metal flavor: it has its own test below
    assert [f.name for f in FILTERS] == [*FILTER_CASES, "whole_host"]


def test_a_bare_metal_node_takes_one_instance(store: Store) -> None:
    with store.session() as session:
        project, image = make_project(session), make_ready_image(session)
        pool = make_pool(session, "baremetal")
        node = make_host(session, pool, vcpus=8, ram_mb=16384, disk_gb=100)
        flavor = make_flavor(session, compute_type="baremetal", vcpus=1, ram_mb=1024, disk_gb=4)
        make_instance(session, project, flavor, image, node)
    # plenty of room by the numbers, but the node is taken
    assert _refused_by(store, flavor) == "whole_host"


@pytest.mark.parametrize("name", list(FILTER_CASES))
def test_each_filter_refuses_with_its_name(store: Store, name: str) -> None:
    with store.session() as session:
        FILTER_CASES[name](session)
        flavor = make_flavor(session, vcpus=2, ram_mb=2048, disk_gb=20, traits=["ssd", "nvme"])
    assert _refused_by(store, flavor) == name


def test_a_projects_own_flavor_goes_to_its_pool_only(store: Store) -> None:
    """A cluster's flavor places only on its pool's hosts; every other flavor never goes to
    a host of a pool that belongs to a project, however roomy."""
    with store.session() as session:
        owner = make_project(session)
        pool = make_pool(session)
        pool.project_id = owner.id
        node = make_host(session, pool, ram_mb=65536)
        _owned(node, owner)
        make_host(session, ram_mb=4096)
        clustered = make_flavor(session)
        clustered.project_id, clustered.pool_id = owner.id, pool.id
        plain = make_flavor(session)
    assert _place(store, clustered).id == node.id
    assert _place(store, plain).id != node.id


def test_no_hosts_at_all(store: Store) -> None:
    with store.session() as session:
        flavor = make_flavor(session)
    with pytest.raises(NoValidHost, match="no hosts are registered"):
        _place(store, flavor)


def test_a_host_that_passes_every_filter_is_chosen(store: Store) -> None:
    with store.session() as session:
        for make in FILTER_CASES.values():
            make(session)
        good = make_host(session, vcpus=2, ram_mb=2048, disk_gb=20, traits=["nvme", "ssd", "x"])
        flavor = make_flavor(session, vcpus=2, ram_mb=2048, disk_gb=20, traits=["ssd", "nvme"])
    assert _place(store, flavor).id == good.id


def test_allocation_ratios_scale_capacity(store: Store) -> None:
    with store.session() as session:
        make_host(session, vcpus=2, cpu_allocation_ratio=4.0, ram_mb=1000, ram_allocation_ratio=1.5)
        fits = make_flavor(session, vcpus=8, ram_mb=1500)
        too_many_cpus = make_flavor(session, vcpus=9, ram_mb=1500)
        too_much_ram = make_flavor(session, vcpus=8, ram_mb=1501)
    _place(store, fits)
    assert _refused_by(store, too_many_cpus) == "vcpus"
    assert _refused_by(store, too_much_ram) == "ram"


def test_weigher_prefers_the_most_free_ram(store: Store) -> None:
    with store.session() as session:
        project, image = make_project(session), make_ready_image(session)
        big_but_full = make_host(session, ram_mb=16384, vcpus=64)
        roomy = make_host(session, ram_mb=8192, vcpus=2)
        small = make_host(session, ram_mb=4096, vcpus=64)
        hog = make_flavor(session, ram_mb=12288, vcpus=1)
        make_instance(session, project, hog, image, big_but_full)  # 4096 MB free left
        flavor = make_flavor(session, ram_mb=512, vcpus=1)
        generation = roomy.generation
    chosen = _place(store, flavor)
    assert chosen.id == roomy.id
    with store.session() as session:
        assert session.get_one(Host, roomy.id).generation == generation + 1
        assert session.get_one(Host, small.id).generation == 0


def test_weigher_breaks_a_ram_tie_by_free_vcpus(store: Store) -> None:
    with store.session() as session:
        make_host(session, ram_mb=4096, vcpus=4)
        more_cpus = make_host(session, ram_mb=4096, vcpus=4, cpu_allocation_ratio=2.0)
        make_host(session, ram_mb=4096, vcpus=6)
        flavor = make_flavor(session, ram_mb=512, vcpus=1)
    assert _place(store, flavor).id == more_cpus.id


def test_capacity_counts_only_live_instances(store: Store) -> None:
    with store.session() as session:
        project, image = make_project(session), make_ready_image(session)
        host = make_host(session, vcpus=4, ram_mb=4096, disk_gb=40)
        flavor = make_flavor(session, vcpus=4, ram_mb=4096, disk_gb=40)
        for _ in range(3):
            make_instance(session, project, flavor, image, host, deleted=True)
        make_instance(session, project, flavor, image, None)  # not placed: holds nothing
    assert _place(store, flavor).id == host.id
    with store.session() as session:
        make_instance(session, project, flavor, image, host)
    assert _refused_by(store, flavor) == "vcpus"


# -- the SQL query and the filters agree ------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_the_candidate_query_passes_exactly_the_hosts_the_filters_pass(
    store: Store, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The query says the filters in SQL; over random hosts, instances and flavors both
    must keep the same hosts."""
    rng = random.Random(seed)
    monkeypatch.setattr(scheduler, "CANDIDATES", 10_000)
    monkeypatch.setattr(scheduler, "WINDOW", 10_000)
    with store.session() as session:
        project, image = make_project(session), make_ready_image(session)
        pools = [make_pool(session, t) for t in ("container", "vm", "baremetal")]
        sizes = [
            make_flavor(session, compute_type=p.compute_type, vcpus=v, ram_mb=r, disk_gb=d)
            for p in pools
            for v, r, d in ((1, 512, 5), (2, 2048, 20), (4, 4096, 40))
        ]
        hosts = []
        for _ in range(40):
            pool = rng.choice(pools)
            hosts.append(
                make_host(
                    session,
                    pool,
                    vcpus=rng.choice((1, 2, 4, 8)),
                    ram_mb=rng.choice((1024, 2048, 4096, 8192)),
                    disk_gb=rng.choice((10, 40, 100)),
                    cpu_allocation_ratio=rng.choice((1.0, 1.5, 4.0)),
                    traits=rng.sample(["ssd", "nvme", "gpu"], rng.randint(0, 2)),
                    enabled=rng.random() > 0.1,
                )
            )
        for _ in range(30):
            host = rng.choice(hosts)
            fitting = [f for f in sizes if f.compute_type == pool_type(session, host)]
            make_instance(
                session, project, rng.choice(fitting), image, host, deleted=rng.random() < 0.3
            )
        flavors = sizes + [
            make_flavor(session, compute_type=p.compute_type, vcpus=1, ram_mb=512, traits=t)
            for p in pools
            for t in (["ssd"], ["ssd", "nvme"])
        ]
    with store.session() as session:
        states = host_states(session, lock=False)
        for flavor in flavors:
            by_filters = {s.host.id for s in states if all(f.passes(s, flavor) for f in FILTERS)}
            by_query = {c.host_id for c in scheduler._candidates(session, flavor, 0, None)}
            assert by_query == by_filters, flavor.name


def pool_type(session: Session, host: Host) -> str:
    return host_states(session, lock=False, host_ids=[host.id])[0].pool.compute_type


def test_a_claim_where_the_flavor_no_longer_fits_takes_the_next_candidate(store: Store) -> None:
    with store.session() as session:
        project, image = make_project(session), make_ready_image(session)
        first = make_host(session, ram_mb=8192, vcpus=2)
        second = make_host(session, ram_mb=4096, vcpus=2)
        flavor = make_flavor(session, ram_mb=512, vcpus=2)
    with store.session() as session:
        fl = session.get_one(Flavor, flavor.id)
        candidates = scheduler._candidates(session, fl, 0, None)
        assert [c.host_id for c in candidates] == [first.id, second.id]
        # Since the query, another create took the first host's vCPUs.
        make_instance(session, project, fl, image, session.get_one(Host, first.id))
        assert scheduler._claim(session, candidates[0], fl, 0, wait=False) is None
        claimed = scheduler._claim(session, candidates[1], fl, 0, wait=True)
        assert claimed is not None and claimed.id == second.id and claimed.generation == 1


def test_a_claim_changes_nothing_but_the_generation(store: Store) -> None:
    """Only the generation: the claim's parameters are never taken as columns to SET."""
    with store.session() as session:
        vm_host = make_host(session, compute_type="vm", zone="z", rack="r")
        flavor = make_flavor(session, ram_mb=512, vcpus=1)  # a container flavor
    with store.session() as session:
        before = {
            c: getattr(session.get_one(Host, vm_host.id), c)
            for c in ("compute_type", "zone", "rack", "ram_mb")
        }
        claimed = scheduler._claim(
            session,
            scheduler.Candidate(vm_host.id, (0, 0)),
            session.get_one(Flavor, flavor.id),
            0,
            wait=True,
        )
        assert claimed is not None
        assert (
            {c: getattr(claimed, c) for c in before}
            == before
            == {"compute_type": "vm", "zone": "z", "rack": "r", "ram_mb": 16384}
        )


# -- the triggers keep each host's usage --------------------------------------------------------
@pytest.mark.parametrize("seed", range(2))
def test_host_usage_equals_the_sums_of_its_live_instances(store: Store, seed: int) -> None:
    """Inserts, moves, resizes, soft and hard deletes in any order: every host's used_*
    columns (kept by triggers) equal the sums over its live instances."""
    rng = random.Random(seed)
    with store.session() as session:
        project, image = make_project(session), make_ready_image(session)
        hosts = [make_host(session) for _ in range(4)]
        flavors = [make_flavor(session, vcpus=v, ram_mb=256 * v, disk_gb=3 * v) for v in (1, 2, 4)]
        ids: list[str] = []
    for step in range(60):
        with store.session() as session:
            live = [i for i in ids if session.get_one(Instance, i).deleted_at is None]
            action = rng.choice(["insert", "insert", "move", "resize", "soft", "hard"])
            if action == "insert" or not live:
                host = rng.choice([*hosts, None])
                row = make_instance(
                    session,
                    project,
                    rng.choice(flavors),
                    image,
                    session.get_one(Host, host.id) if host else None,
                    name=f"i{step}",
                    deleted=rng.random() < 0.1,
                )
                ids.append(row.id)
                continue
            row = session.get_one(Instance, rng.choice(live))
            if action == "move":
                row.host_id = rng.choice(hosts).id if rng.random() < 0.8 else None
            elif action == "resize":
                flavor = rng.choice(flavors)
                row.vcpus, row.ram_mb, row.disk_gb = flavor.vcpus, flavor.ram_mb, flavor.disk_gb
            elif action == "soft":
                row.status, row.deleted_at = "DELETED", utcnow()
            else:
                session.delete(row)
                ids.remove(row.id)
    with store.session() as session:
        for state in host_states(session, lock=False):
            rows = session.scalars(
                select(Instance).where(
                    Instance.host_id == state.host.id, Instance.deleted_at.is_(None)
                )
            ).all()
            assert (
                state.used_vcpus,
                state.used_ram_mb,
                state.used_disk_gb,
                state.instances,
            ) == (
                sum(i.vcpus for i in rows),
                sum(i.ram_mb for i in rows),
                sum(i.disk_gb for i in rows),
                len(rows),
            )
        assert sum(s.instances for s in host_states(session, lock=False)) > 0


# -- failure domains -------------------------------------------------------------------------
def test_a_projects_instances_spread_across_zones_then_racks(store: Store) -> None:
    """The weigher puts a project's next instance in the zone, then the rack, holding the
    fewest of its instances, before any free-RAM preference; other projects don't count."""
    with store.session() as session:
        project, other, image = (
            make_project(session),
            make_project(session),
            make_ready_image(session),
        )
        pool = make_pool(session)
        layout = {  # name: (zone, rack, RAM): zone a's hosts have the most free RAM
            "a1": ("a", "r1", 32768),
            "a2": ("a", "r2", 32768),
            "b1": ("b", "r1", 16384),
            "b2": ("b", "r2", 8192),
            "c1": ("c", "r1", 4096),
        }
        hosts = {
            name: make_host(session, pool, zone=z, rack=r, ram_mb=ram, vcpus=64)
            for name, (z, r, ram) in layout.items()
        }
        flavor = make_flavor(session, ram_mb=1024, vcpus=1)
        # Another project's instances in zones b and c change nothing for this one.
        make_instance(session, other, flavor, image, hosts["b1"])
        make_instance(session, other, flavor, image, hosts["c1"])
        caller = caller_for(project)
    by_id = {h.id: name for name, h in hosts.items()}

    def place(i: int) -> str:
        accepted = service.create_instance(
            store, caller, InstanceCreate(name=f"db-{i}", flavor=flavor.name, image=image.name)
        )
        with store.session() as session:
            return by_id[str(session.get_one(Instance, accepted.instance.id).host_id)]

    placed = [place(i) for i in range(6)]
    # One per zone first (most free RAM among the zones not yet used), then a second in
    # each zone, each on the rack of that zone it does not hold yet.
    assert [p[0] for p in placed[:3]] == ["a", "b", "c"]
    assert placed[0] in ("a1", "a2") and placed[1] == "b1"
    assert sorted(placed[3:5]) == sorted({"a1", "a2"} - {placed[0]} | {"b2"})
    assert placed[5] in ("a1", "a2", "b1", "b2", "c1")
    zones = [p[0] for p in placed]
    assert max(zones.count(z) for z in "abc") - min(zones.count(z) for z in "abc") <= 1


def test_hosts_without_a_domain_are_one_domain(store: Store) -> None:
    with store.session() as session:
        project, image = make_project(session), make_ready_image(session)
        pool = make_pool(session)
        plain = make_host(session, pool, ram_mb=65536)
        zoned = make_host(session, pool, zone="z", rack="r", ram_mb=2048)
        flavor = make_flavor(session, ram_mb=512, vcpus=1)
        make_instance(session, project, flavor, image, plain)
    with store.session() as session:
        chosen = select_host(session, session.get_one(Flavor, flavor.id), spread_project=project.id)
        assert chosen.id == zoned.id


# -- concurrency -----------------------------------------------------------------------------
N = 4  # instances the host has room for


def test_concurrent_creates_never_overcommit(store: Store) -> None:
    with store.session() as session:
        project = make_project(session)
        # Room for exactly N instances: vCPUs are the limit, RAM and disk have spare.
        host = make_host(session, vcpus=2 * N, ram_mb=2048 * N + 1024, disk_gb=1000)
        flavor = make_flavor(session, vcpus=2, ram_mb=2048, disk_gb=10)
        image = make_ready_image(session)
    caller = caller_for(project)
    capacity = host.vcpus * host.cpu_allocation_ratio
    attempts = 3 * N
    barrier = threading.Barrier(attempts)
    done = threading.Event()
    peaks: list[int] = []

    def watch() -> None:
        while not done.is_set():
            with store.session() as session:
                used = session.scalar(
                    select(func.coalesce(func.sum(Instance.vcpus), 0)).where(
                        Instance.host_id == host.id, Instance.deleted_at.is_(None)
                    )
                )
            peaks.append(int(used or 0))
            done.wait(0.005)

    def create(i: int) -> Any:
        barrier.wait()
        try:
            return service.create_instance(
                store, caller, InstanceCreate(name=f"db-{i}", flavor=flavor.name, image=image.name)
            )
        except NoValidHost as err:
            return err

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(attempts) as pool:
            results = list(pool.map(create, range(attempts)))
    finally:
        done.set()
        watcher.join()

    refused = [r for r in results if isinstance(r, NoValidHost)]
    accepted = [r for r in results if not isinstance(r, NoValidHost)]
    assert len(accepted) == N, results
    assert len(refused) == attempts - N
    assert {(e.status, e.code, e.details.get("filter")) for e in refused} == {
        (409, "no_valid_host", "vcpus")
    }
    assert max(peaks) <= capacity

    with store.session() as session:
        live = session.scalars(select(Instance).where(Instance.deleted_at.is_(None))).all()
        assert sorted(i.name for i in live) == sorted(a.instance.name for a in accepted)
        assert {i.host_id for i in live} == {host.id}
        assert sum(i.vcpus for i in live) == capacity
        assert {i.status for i in live} == {"BUILD"}
        # Each accepted create left one PENDING operation and one event; refusals nothing.
        ops = session.scalars(select(Operation)).all()
        assert sorted(o.resource_id for o in ops) == sorted(i.id for i in live)
        assert {o.status for o in ops} == {OperationStatus.PENDING.value}
        assert session.scalar(select(func.count()).select_from(Event)) == N
        ports = session.scalars(select(PortAllocation)).all()
        assert len(ports) == N * len(image.ports)
        assert len({p.host_port for p in ports}) == len(ports)
        assert session.get_one(Host, host.id).generation == N
