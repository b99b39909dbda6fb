"""Clusters: what a request writes, who sees it, and every refusal with its code (the
nodes' VMs and Podman over SSH are in tests/e2e/test_clusters.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from oneplatform.clusters import service
from oneplatform.clusters.keys import new_private_key, public_key_of
from oneplatform.compute import catalog
from oneplatform.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from oneplatform.iam import MEMBER
from oneplatform.schemas.clusters import ClusterCreate, ClusterResize
from oneplatform.store.models import (
    Cluster,
    ClusterNode,
    Flavor,
    Host,
    Image,
    Instance,
    Pool,
    PortAllocation,
    Project,
)
from tests.factories import caller_for, make_host, make_instance, make_project
from tests.world import World


def _create(world: World, name: str = "c1", **fields: object) -> str:
    req = ClusterCreate.model_validate({"name": name, "node_flavor": "vm.small", **fields})
    return service.create_cluster(world.store, world.settings, world.member, req).cluster.id


def _counts(world: World) -> tuple[int, ...]:
    with world.store.session() as session:
        return tuple(
            int(session.scalar(select(func.count()).select_from(model)) or 0)
            for model in (Cluster, ClusterNode, Pool, Flavor, Instance, PortAllocation)
        )


def test_create_makes_the_owners_pool_flavor_and_nodes(world: World) -> None:
    cluster_id = _create(world, size=2)
    with world.store.session() as session:
        cluster = session.get_one(Cluster, cluster_id)
        assert cluster.status == "BUILD" and cluster.project_id == world.member.project_id
        pool = session.get_one(Pool, cluster.pool_id)
        flavor = session.get_one(Flavor, cluster.flavor_id)
        assert (pool.name, pool.compute_type, pool.project_id) == (
            "c1",
            "container",
            world.member.project_id,
        )
        assert pool.settings["identity_file"].endswith(f"{cluster_id}/id_ed25519")
        assert (flavor.name, flavor.pool_id, flavor.project_id) == (
            "c1.small",
            pool.id,
            world.member.project_id,
        )
        nodes = list(session.scalars(select(ClusterNode).order_by(ClusterNode.name)))
        assert [n.name for n in nodes] == ["c1-0", "c1-1"]
        for node in nodes:
            instance = session.get_one(Instance, node.instance_id)
            # an instance of the owner's project, on the podman-host image
            assert instance.project_id == world.member.project_id
            assert instance.managed_by is None
            assert session.get_one(Image, instance.image_id).name == "podman-host"
            ports = {
                p.name: (p.guest_port, p.host_port)
                for p in session.scalars(
                    select(PortAllocation).where(PortAllocation.instance_id == instance.id)
                )
            }
            assert ports["ssh"] == (22, node.ssh_port)
            block = range(int(node.port_range_start or 0), int(node.port_range_end or 0) + 1)
            assert len(block) == service.NODE_PORTS
            for port in block:  # forwarded 1:1
                assert ports[f"fwd-{port}"] == (port, port)
    # the key file is the owner's machine's, 0600
    path = world.settings.home / "clusters" / cluster_id / "id_ed25519"
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_flavor_and_the_cluster_are_the_owners_only(world: World) -> None:
    _create(world)
    assert "c1.small" in {f.name for f in catalog.list_flavors(world.store, world.member)}
    with world.store.session() as session:
        outsider = caller_for(make_project(session), MEMBER)
    assert "c1.small" not in {f.name for f in catalog.list_flavors(world.store, outsider)}
    assert "c1.small" not in {f.name for f in catalog.list_flavors(world.store)}
    with world.store.session() as session, pytest.raises(NotFound) as info:
        catalog.flavor_by_name(session, "c1.small", outsider.project_id)
    assert info.value.code == "flavor_not_found"
    assert service.list_clusters(world.store, outsider) == []
    for call in (
        lambda: service.get_cluster(world.store, outsider, "c1"),
        lambda: service.connect(world.store, world.settings, outsider, "c1"),
        lambda: service.delete_cluster(world.store, world.settings, outsider, "c1"),
        lambda: service.resize_cluster(
            world.store, world.settings, outsider, "c1", ClusterResize(size=2)
        ),
    ):
        with pytest.raises(NotFound) as info:
            call()
        assert info.value.code == "cluster_not_found"


@pytest.mark.parametrize(
    ("fields", "error", "code"),
    [
        ({"node_flavor": "container.small"}, Conflict, "node_flavor_not_supported"),
        ({"node_flavor": "baremetal.small"}, Conflict, "node_flavor_not_supported"),
        ({"node_flavor": "nope"}, NotFound, "flavor_not_found"),
        ({"public_key": "ssh-rsa not-a-key"}, InvalidInput, "invalid_public_key"),
        ({"name": "containers"}, AlreadyExists, "cluster_exists"),  # a pool's name
    ],
)
def test_a_refused_create_leaves_nothing(
    world: World, fields: dict[str, object], error: type[Exception], code: str
) -> None:
    before = _counts(world)
    with pytest.raises(error) as info:
        _create(world, **fields)
    assert getattr(info.value, "code", None) == code
    assert _counts(world) == before


def test_a_name_is_taken_until_its_cluster_is_gone(world: World) -> None:
    _create(world)
    with pytest.raises(AlreadyExists) as info:
        _create(world)
    assert info.value.code == "cluster_exists"


def test_the_owners_public_key_is_checked_and_then_no_key_file_is_handed_out(
    world: World,
) -> None:
    key = public_key_of(new_private_key(), "owner@laptop")
    cluster_id = _create(world, public_key=key)
    with world.store.session() as session:
        assert session.get_one(Cluster, cluster_id).public_key == key
        node = session.scalars(select(ClusterNode)).one()
        node.host_id = make_host(session).id  # as a registration leaves it
    (conn,) = service.connect(world.store, world.settings, world.member, "c1")
    assert conn.identity_file is None and conn.url.endswith("/run/podman/podman.sock")


def test_connect_waits_for_a_registered_node(world: World) -> None:
    _create(world)
    with pytest.raises(Conflict) as info:
        service.connect(world.store, world.settings, world.member, "c1")
    assert info.value.code == "invalid_state"


def _registered(world: World) -> tuple[str, str]:
    """A cluster whose node is registered as a host of its pool: (cluster id, host id)."""
    cluster_id = _create(world)
    with world.store.session() as session:
        cluster = session.get_one(Cluster, cluster_id)
        cluster.status = "ACTIVE"
        host = make_host(session, session.get_one(Pool, cluster.pool_id))
        host.project_id = cluster.project_id
        node = session.scalars(select(ClusterNode)).one()
        node.host_id, node.status = host.id, "ACTIVE"
        return cluster_id, host.id


def test_delete_and_drain_are_refused_while_something_lives_on_a_node(world: World) -> None:
    cluster_id, host_id = _registered(world)
    with world.store.session() as session:
        cluster = session.get_one(Cluster, cluster_id)
        flavor = session.get_one(Flavor, cluster.flavor_id)
        image = session.scalars(select(Image)).first()
        assert image is not None
        owner = session.get_one(Project, cluster.project_id)
        make_instance(session, owner, flavor, image, session.get_one(Host, host_id), name="pgk")
    with pytest.raises(Conflict) as info:
        service.delete_cluster(world.store, world.settings, world.member, "c1")
    assert info.value.code == "cluster_in_use" and "pgk" in info.value.message
    with world.store.session() as session:
        assert session.get_one(Cluster, cluster_id).status == "ACTIVE"
        assert session.get_one(Host, host_id).enabled


def test_delete_takes_the_nodes_off_the_scheduler_at_once(world: World) -> None:
    _cluster_id, host_id = _registered(world)
    accepted = service.delete_cluster(world.store, world.settings, world.member, "c1")
    assert accepted.cluster.status == "DELETING" and accepted.operation.kind == "cluster.delete"
    with world.store.session() as session:
        assert not session.get_one(Host, host_id).enabled
        assert session.scalars(select(ClusterNode)).one().status == "DRAINING"
    with pytest.raises(Conflict) as info:
        service.delete_cluster(world.store, world.settings, world.member, "c1")
    assert info.value.code == "invalid_state"


def test_resize_refusals(world: World) -> None:
    _create(world)
    with pytest.raises(Conflict) as info:  # still building
        service.resize_cluster(
            world.store, world.settings, world.member, "c1", ClusterResize(size=2)
        )
    assert info.value.code == "invalid_state"


def test_resize_grows_by_new_nodes_and_refuses_the_same_size(world: World) -> None:
    _registered(world)
    with pytest.raises(Conflict) as info:
        service.resize_cluster(
            world.store, world.settings, world.member, "c1", ClusterResize(size=1)
        )
    assert info.value.code == "nothing_to_do"
    grown = service.resize_cluster(
        world.store, world.settings, world.member, "c1", ClusterResize(size=2)
    )
    assert grown.cluster.status == "RESIZE" and grown.cluster.size == 2
    assert [n.name for n in grown.cluster.nodes] == ["c1-0", "c1-1"]
    assert grown.cluster.nodes[1].status == "BUILD"
