"""Ports belong to the machine and address they are bound on, whatever the compute type."""

from __future__ import annotations

import socket

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from oneplatform.compute.drivers import register_driver, unregister_driver
from oneplatform.compute.ports import allocate_from_range, machine_of, machine_of_address
from oneplatform.errors import NoValidHost
from oneplatform.schemas.compute import ComputeType
from oneplatform.store.db import Store
from oneplatform.store.models import Host, Image, Node, Pool, PortAllocation
from tests.factories import (
    make_flavor,
    make_host,
    make_instance,
    make_pool,
    make_project,
    make_ready_image,
)
from tests.fakes import CLOUD, FakeDriver

SERVICES = {"postgresql": 5432, "agent": 8471}


def _free_range(width: int = 8) -> int:
    """The first port of ``width`` consecutive ports nothing listens on right now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            start = probe.getsockname()[1] - width
        if start > 1024 and all(_free(p) for p in range(start, start + width)):
            return start
    raise AssertionError("no free port range")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def base() -> int:
    return _free_range()


def _host(
    session: Session, compute_type: str, uri: str, base: int, address: str = "127.0.0.1"
) -> Host:
    host = make_host(session, make_pool(session, compute_type), uri=uri)
    host.machine, host.bind_address = machine_of(uri), address
    host.port_range_start, host.port_range_end = base, base + 7
    return host


def _place(store: Store, host_name: str) -> dict[str, int]:
    with store.session() as session:
        host = session.scalars(select(Host).where(Host.name == host_name)).one()
        project = make_project(session)
        image = session.scalars(select(Image)).first() or make_ready_image(session)
        instance = make_instance(session, project, make_flavor(session), image, host)
        allocate_from_range(session, host, instance, SERVICES)
        rows = session.scalars(
            select(PortAllocation).where(PortAllocation.instance_id == instance.id)
        )
        return {p.name: p.host_port for p in rows}


def test_machines_are_named_by_their_uri() -> None:
    assert machine_of("local://") == machine_of("qemu:///system") == "local"
    assert machine_of("unix:///run/podman/podman.sock") == "local"
    assert machine_of("ssh://core@db7.example/run/podman/podman.sock") == "db7.example"
    assert machine_of("qemu+ssh://root@127.0.0.1/system") == "local"
    assert machine_of_address("127.0.0.2") == "local"
    assert machine_of_address("10.0.0.7") == "10.0.0.7"


def test_hosts_of_two_compute_types_on_one_machine_never_share_a_port(
    store: Store, base: int
) -> None:
    with store.session() as session:
        podman = _host(session, "container", "local://", base)
        libvirt = _host(session, "vm", "qemu:///system", base)
        names = podman.name, libvirt.name
    first, second = _place(store, names[0]), _place(store, names[1])
    assert set(first.values()).isdisjoint(second.values())
    assert set(first.values()) | set(second.values()) == set(range(base, base + 4))


def test_a_port_something_else_holds_is_skipped_for_a_vm_host(store: Store, base: int) -> None:
    with store.session() as session:
        name = _host(session, "vm", "qemu:///system", base).name
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base))
        squatter.listen(1)
        ports = _place(store, name)
    assert base not in ports.values()


def test_a_port_the_backend_publishes_for_another_is_skipped(store: Store, base: int) -> None:
    """A container outside the platform (or one whose conmon died, leaving its forwarding
    rule) publishes a port nothing listens on: a bind finds it free, the backend knows."""
    CLOUD.__init__()  # type: ignore[misc]
    CLOUD.published = {base, base + 2}
    register_driver(ComputeType.CONTAINER, "fake", lambda: FakeDriver)
    try:
        with store.session() as session:
            host = _host(session, "container", "fake://podman", base)
            host.machine = "local"
            session.get_one(Pool, host.pool_id).settings = {"driver": "fake"}
            name = host.name
        ports = _place(store, name)
    finally:
        unregister_driver(ComputeType.CONTAINER, "fake")
    assert sorted(ports.values()) == [base + 1, base + 3]


def test_another_machine_has_ports_of_its_own(store: Store, base: int) -> None:
    with store.session() as session:
        here = _host(session, "container", "local://", base).name
        there = _host(session, "container", "ssh://core@db7/run/podman/podman.sock", base).name
    assert sorted(_place(store, here).values()) == sorted(_place(store, there).values())


def test_another_address_of_this_machine_has_ports_of_its_own(store: Store, base: int) -> None:
    with store.session() as session:
        one = _host(session, "container", "local://", base).name
        two = _host(session, "container", "local://", base, address="127.0.0.2").name
    assert sorted(_place(store, one).values()) == sorted(_place(store, two).values())


def test_a_nodes_port_map_is_never_handed_out(store: Store, base: int) -> None:
    with store.session() as session:
        name = _host(session, "container", "local://", base).name
        pool = make_pool(session, "baremetal")
        node_host = make_host(session, pool, uri="node://n1")
        session.add(
            Node(
                name="n1",
                pool_id=pool.id,
                host_id=node_host.id,
                state="available",
                bmc_address="http://127.0.0.1:1",
                bmc_system_id="x",
                port_map={"5432": {"host": "127.0.0.1", "port": base}},
            )
        )
    assert base not in _place(store, name).values()


def test_a_full_range_is_a_clear_refusal(store: Store, base: int) -> None:
    with store.session() as session:
        name = _host(session, "container", "local://", base).name
    for _ in range(4):
        _place(store, name)
    with pytest.raises(NoValidHost, match="no free port left") as err:
        _place(store, name)
    assert err.value.code == "no_free_port"
