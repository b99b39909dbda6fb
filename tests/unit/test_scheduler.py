"""Placement: each filter, the weigher, live capacity, and no overcommit under concurrency."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from oneplatform.compute import instances as service
from oneplatform.compute.scheduler import FILTERS, select_host
from oneplatform.errors import NoValidHost
from oneplatform.ops.kinds import OperationStatus
from oneplatform.schemas.instances import InstanceCreate
from oneplatform.store.db import Store
from oneplatform.store.models import Event, Flavor, Host, Instance, Operation, PortAllocation
from tests.factories import (
    caller_for,
    make_flavor,
    make_host,
    make_instance,
    make_pool,
    make_project,
    make_ready_image,
)


def _place(store: Store, flavor: Flavor) -> Host:
    with store.session() as session:
        return select_host(session, session.get_one(Flavor, flavor.id), lock=store.postgres)


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
