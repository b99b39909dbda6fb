"""Fixtures of the unit tests: ``world``, a platform on fakes (see tests/world.py)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from oneplatform.baremetal import ramdisk
from oneplatform.baremetal.bmc import register_bmc
from oneplatform.compute.drivers import register_driver, unregister_driver
from oneplatform.config import Settings
from oneplatform.dbaas.datastores import DATASTORES
from oneplatform.iam import MEMBER
from oneplatform.schemas.compute import ComputeType
from oneplatform.store.db import Store
from oneplatform.store.models import Flavor, Host, Pool
from tests.factories import caller_for, make_project, make_ready_image
from tests.fakes import CLOUD, FakeDriver, FakePostgreSQL, FakeVmDriver, fake_bmc_factory
from tests.world import IMAGE, World, fake_iso, plant_image_formats

FLAVORS = (
    ("container.small", "container", 1, 512),
    ("container.large", "container", 4, 4096),
    ("vm.small", "vm", 1, 1024),
    ("vm.medium", "vm", 2, 2048),
    ("baremetal.small", "baremetal", 1, 1024),
)


def _above_ephemeral_ports() -> int:
    """The first port above Linux's ephemeral range (61000 with the default 32768-60999): no
    outgoing connection of the machine takes one of those, which the fake nodes' port maps
    name and bind."""
    try:
        high = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        high = 60999
    return min(high + 1, 65000) // 100 * 100 + 100


def _port_block() -> int:
    """A random block of 100 ports for one test's fake hosts: each xdist worker draws from
    blocks of its own (two tests running at once never pick the same ports)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker) if worker.isdigit() else 0
    blocks = range(_above_ephemeral_ports() // 100 + index, 654, max(1, workers))
    return random.choice(blocks) * 100


@pytest.fixture
def world(store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """Fake containers and VMs (one host each, on a random port range), a
    bare-metal pool for fake nodes, the default flavors, the image READY."""
    CLOUD.__init__()  # type: ignore[misc]
    register_driver(ComputeType.CONTAINER, "fake", lambda: FakeDriver)
    register_driver(ComputeType.VM, "fake", lambda: FakeVmDriver)
    register_bmc("fake", fake_bmc_factory)
    pg = FakePostgreSQL()
    monkeypatch.setitem(DATASTORES, "postgresql", pg)
    monkeypatch.setattr(ramdisk, "build_deploy_iso", fake_iso)
    settings.ready_timeout_seconds = 30
    disk_sha = plant_image_formats(settings)
    base = _port_block()
    with store.session() as session:
        admin_project, project = make_project(session, "admin"), make_project(session)
        make_ready_image(session, IMAGE)
        for ct, start in (("container", base), ("vm", base + 50)):
            pool = Pool(name=f"{ct}s", compute_type=ct, settings={"driver": "fake"})
            session.add(pool)
            session.flush()
            session.add(
                Host(
                    name=f"{ct}-host",
                    pool_id=pool.id,
                    uri=f"fake://{ct}",
                    machine="local",  # the fakes listen on this machine's 127.0.0.1
                    vcpus=8,
                    ram_mb=16384,
                    disk_gb=500,
                    traits=[],
                    port_range_start=start,
                    port_range_end=start + 49,
                )
            )
        session.add(Pool(name="baremetal", compute_type="baremetal", settings={}))
        for name, ct, vcpus, ram in FLAVORS:
            session.add(
                Flavor(name=name, compute_type=ct, vcpus=vcpus, ram_mb=ram, disk_gb=4, traits=[])
            )
        admin, member = caller_for(admin_project), caller_for(project, MEMBER)
    try:
        yield World(store, settings, admin, member, pg, disk_sha, base)
    finally:
        for node in CLOUD.nodes.values():
            node.shut_down()
        CLOUD.close()
        unregister_driver(ComputeType.CONTAINER, "fake")
        unregister_driver(ComputeType.VM, "fake")
