"""Clusters: what a request writes, who sees it, and every refusal with its code (the
nodes' VMs and Podman over SSH are in tests/e2e/test_clusters.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from oneplatform.clusters import service
from oneplatform.clusters.keys import new_private_key, public_key_of
from oneplatform.compute import catalog, instances
from oneplatform.compute.drivers.base import HostRef, InstanceSpec, PortMapping
from oneplatform.compute.drivers.container import PodmanDriver
from oneplatform.compute.hosts import reach_host
from oneplatform.dbaas import replicas
from oneplatform.dbaas import service as dbaas
from oneplatform.errors import AlreadyExists, Conflict, InvalidInput, NotFound, NoValidHost
from oneplatform.iam import MEMBER
from oneplatform.images import wholedisk
from oneplatform.images.artifacts import ImageArtifact
from oneplatform.images.builder import rootfs_path, vm_image_path
from oneplatform.images.recipes import load_recipe
from oneplatform.schemas.clusters import ClusterCreate, ClusterResize
from oneplatform.schemas.compute import ComputeType, HostCreate
from oneplatform.secrets import box_for
from oneplatform.store.models import (
    Cluster,
    ClusterNode,
    DbMember,
    Flavor,
    Host,
    Image,
    Instance,
    Node,
    Operation,
    Pool,
    PortAllocation,
    Project,
)
from tests.factories import caller_for, make_host, make_instance, make_project, make_ready_image
from tests.fakes import CLOUD, FakeNode
from tests.world import World, _listen


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
        assert pool.settings["cluster_id"] == cluster_id  # its key: written where needed
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


def test_any_machine_driving_a_node_gets_the_clusters_key(world: World, tmp_path: Path) -> None:
    """A worker elsewhere (another ONEP_HOME) reaches a node host with the cluster's key,
    written there (0600) when first needed."""
    cluster_id = _create(world)
    key = world.settings.secret_key or (world.settings.home / "secret.key").read_text().strip()
    elsewhere = world.settings.model_copy(  # the same secrets key, as every machine has
        update={"home": tmp_path / "other-machine", "secret_key": key}
    )
    with world.store.session() as session:
        cluster = session.get_one(Cluster, cluster_id)
        pool = session.get_one(Pool, cluster.pool_id)
        host = make_host(session, pool, uri="ssh://root@127.0.0.1:2222/run/podman/podman.sock")
        ref = reach_host(session, elsewhere, host)
        private = box_for(world.settings).decrypt(cluster.key_enc)
    path = elsewhere.home / "clusters" / cluster_id / "id_ed25519"
    assert ref.settings["identity_file"] == str(path)
    assert path.read_text() == private and path.stat().st_mode & 0o777 == 0o600


def test_a_node_is_not_deleted_as_a_plain_instance(world: World) -> None:
    _create(world)
    assert "c1-0" in {i.name for i in instances.list_instances(world.store, world.member)}
    before = _counts(world)
    with pytest.raises(Conflict) as info:
        instances.delete_instance(world.store, world.member, "c1-0")
    assert info.value.code == "instance_in_cluster"
    assert "onep cluster resize c1" in str(info.value)
    assert _counts(world) == before


def test_an_admin_adds_no_host_to_a_clusters_pool(world: World) -> None:
    _create(world)
    before = _counts(world)
    req = HostCreate(name="extra", pool="c1", uri="ssh://root@127.0.0.9/run/podman/podman.sock")
    with pytest.raises(Conflict) as info:
        catalog.register_host(world.store, world.admin, req)
    assert info.value.code == "pool_of_a_cluster"
    assert _counts(world) == before


def test_a_shrink_takes_a_failed_node_before_a_healthy_one(world: World) -> None:
    cluster_id = _create(world, size=2)
    with world.store.session() as session:
        nodes = list(session.scalars(select(ClusterNode).order_by(ClusterNode.name)))
        hosts = [make_host(session) for _ in nodes]
        for node, host, status in zip(nodes, hosts, ("ERROR", "ACTIVE"), strict=True):
            node.status, node.host_id = status, (host.id if status == "ACTIVE" else None)
        session.get_one(Cluster, cluster_id).status = "ERROR"
    service.resize_cluster(world.store, world.settings, world.member, "c1", ClusterResize(size=1))
    with world.store.session() as session:
        states = {n.name: n.status for n in session.scalars(select(ClusterNode))}
    assert states == {"c1-0": "DRAINING", "c1-1": "ACTIVE"}  # not the newest: the failed one


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
        ({"node_flavor": "baremetal.small"}, NoValidHost, "no_valid_host"),  # no node
        ({"node_flavor": "nope"}, NotFound, "flavor_not_found"),
        ({"public_key": "ssh-rsa not-a-key"}, InvalidInput, "invalid_public_key"),
        ({"name": "containers"}, InvalidInput, "cluster_name_reserved"),  # a built-in pool's
        ({"name": "baremetal"}, InvalidInput, "cluster_name_reserved"),  # baremetal.small
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
    assert info.value.code == "cluster_in_use" and "instance pgk" in info.value.message
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


# -- the operations, on fakes ------------------------------------------------------------------
@pytest.fixture
def fake_nodes(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    """The podman-host image built (its formats planted) and the cluster pools' driver the
    fake container driver (it answers any URI as a Podman host)."""
    recipe = load_recipe(service.NODE_IMAGE)
    cache = world.settings.images_dir
    rootfs_path(recipe, cache).write_bytes(b"rootfs")
    vm = vm_image_path(recipe, cache)
    for path in (vm.disk, vm.kernel, vm.initrd):
        path.write_bytes(b"vm")
    with world.store.session() as session:
        make_ready_image(session, service.NODE_IMAGE)
    monkeypatch.setitem(service.NODE_POOL_SETTINGS, "driver", "fake")
    return world


def _hosts(world: World) -> dict[str, Host]:
    with world.store.session() as session:
        return {
            h.name: h for h in session.scalars(select(Host).where(Host.project_id.is_not(None)))
        }


def test_create_resize_and_delete_drive_the_nodes_and_their_hosts(fake_nodes: World) -> None:
    world = fake_nodes
    req = ClusterCreate(name="c1", node_flavor="vm.small", size=1)
    accepted = service.create_cluster(world.store, world.settings, world.member, req)
    op = world.drive(accepted.operation.id)
    assert op.status == "SUCCEEDED", op.error_message
    assert [s["name"] for s in op.steps] == ["wait_nodes", "register", "finish"]
    cluster = service.get_cluster(world.store, world.member, "c1")
    assert cluster.status == "ACTIVE" and [n.status for n in cluster.nodes] == ["ACTIVE"]
    host = _hosts(world)["c1-0"]
    node = cluster.nodes[0]
    assert host.uri == f"ssh://root@127.0.0.1:{node.ssh_port}/run/podman/podman.sock"
    assert (host.port_range_start, host.port_range_end) == (
        node.port_range_start,
        node.port_range_end,
    )
    assert host.project_id == world.member.project_id and host.machine.startswith("cluster-")

    grown = service.resize_cluster(
        world.store, world.settings, world.member, "c1", ClusterResize(size=2)
    )
    op = world.drive(grown.operation.id)
    assert op.status == "SUCCEEDED", op.error_message
    assert set(_hosts(world)) == {"c1-0", "c1-1"}

    shrunk = service.resize_cluster(
        world.store, world.settings, world.member, "c1", ClusterResize(size=1)
    )
    assert [n.status for n in shrunk.cluster.nodes] == ["ACTIVE", "DRAINING"]
    op = world.drive(shrunk.operation.id)
    assert op.status == "SUCCEEDED", op.error_message
    assert set(_hosts(world)) == {"c1-0"}  # nothing named c1-1's host: it is gone
    assert [n.name for n in service.get_cluster(world.store, world.member, "c1").nodes] == ["c1-0"]

    gone = service.delete_cluster(world.store, world.settings, world.member, "c1")
    op = world.drive(gone.operation.id)
    assert op.status == "SUCCEEDED", op.error_message
    assert service.list_clusters(world.store, world.member) == []
    assert "c1.small" not in {f.name for f in catalog.list_flavors(world.store, world.member)}
    with world.store.session() as session:
        assert session.scalars(select(Pool).where(Pool.name == "c1")).first() is None
        statuses = {i.name: i.status for i in session.scalars(select(Instance))}
    assert statuses == {"c1-0": "DELETED", "c1-1": "DELETED"}
    assert not (world.settings.home / "clusters" / accepted.cluster.id).exists()
    # the name is free again
    again = service.create_cluster(world.store, world.settings, world.member, req)
    assert again.cluster.pool == "c1" and again.cluster.flavor == "c1.small"


def _active_cluster(world: World, size: int) -> None:
    req = ClusterCreate(name="c1", node_flavor="vm.small", size=size)
    accepted = service.create_cluster(world.store, world.settings, world.member, req)
    op = world.drive(accepted.operation.id)
    assert op.status == "SUCCEEDED", op.error_message


def _node_of(world: World, member: str) -> str:
    with world.store.session() as session:
        instance = session.get_one(
            Instance,
            session.scalars(select(DbMember.instance_id).where(DbMember.name == member)).one(),
        )
        return session.get_one(Host, instance.host_id).name


def test_a_shrink_moves_the_databases_off_the_drained_node_first(fake_nodes: World) -> None:
    world = fake_nodes
    _active_cluster(world, size=2)
    world.create_db("pgk", flavor="c1.small")
    world.drive_all()
    where = _node_of(world, "pgk")
    stays = ({"c1-0", "c1-1"} - {where}).pop()
    before = dbaas.get_db(world.store, world.member, "pgk")

    shrunk = service.resize_cluster(
        world.store, world.settings, world.member, "c1", ClusterResize(size=1, remove=[where])
    )
    assert {n.name: n.status for n in shrunk.cluster.nodes} == {where: "DRAINING", stays: "ACTIVE"}
    assert dbaas.get_db(world.store, world.member, "pgk").status == "RESIZE"
    op = world.drive(shrunk.operation.id)
    assert op.status == "SUCCEEDED", op.error_message
    assert [s["name"] for s in op.steps][:4] == [
        "wait_nodes",
        "register",
        "wait_moves",
        "remove_nodes",
    ]
    world.drive_all()
    after = dbaas.get_db(world.store, world.member, "pgk")
    assert (after.id, after.status, after.endpoint) == (before.id, "ACTIVE", before.endpoint)
    members = replicas.list_members(world.store, world.settings, world.member, "pgk")
    assert [(m.name, m.role, m.state) for m in members] == [("pgk-r1", "primary", "ACTIVE")]
    assert _node_of(world, "pgk-r1") == stays
    # the drained node's host: gone from the pool (kept, disabled, for the records naming it)
    hosts = _hosts(world)
    assert {n for n in hosts if not n.startswith("retired-")} == {stays}
    assert not any(h.enabled for n, h in hosts.items() if n != stays)
    assert [n.name for n in service.get_cluster(world.store, world.member, "c1").nodes] == [stays]


def test_a_shrink_the_others_cannot_hold_is_refused_with_nothing_changed(
    fake_nodes: World,
) -> None:
    world = fake_nodes
    _active_cluster(world, size=2)
    world.create_db("pgk", flavor="c1.small")
    world.drive_all()
    where = _node_of(world, "pgk")
    with world.store.session() as session:  # the node that stays is full
        for host in session.scalars(select(Host).where(Host.name != where)):
            if host.project_id is not None:
                host.vcpus = 0
    before = _counts(world)
    with pytest.raises(NoValidHost) as info:
        service.resize_cluster(
            world.store, world.settings, world.member, "c1", ClusterResize(size=1, remove=[where])
        )
    assert info.value.code == "no_valid_host" and info.value.status == 409
    assert _counts(world) == before
    cluster = service.get_cluster(world.store, world.member, "c1")
    assert cluster.status == "ACTIVE" and {n.status for n in cluster.nodes} == {"ACTIVE"}
    assert all(h.enabled for h in _hosts(world).values())
    assert dbaas.get_db(world.store, world.member, "pgk").status == "ACTIVE"


def test_nodes_to_remove_must_fit_the_shrink(fake_nodes: World) -> None:
    world = fake_nodes
    _active_cluster(world, size=2)
    for req, words in (
        (ClusterResize(size=1, remove=["c1-7"]), "has no node c1-7"),
        (ClusterResize(size=1, remove=["c1-0", "c1-1"]), "removes 1"),
        (ClusterResize(size=3, remove=["c1-0"]), "only when the cluster shrinks"),
    ):
        with pytest.raises(InvalidInput) as info:
            service.resize_cluster(world.store, world.settings, world.member, "c1", req)
        assert words in info.value.message and info.value.code == "invalid_input"
    cluster = service.get_cluster(world.store, world.member, "c1")
    assert cluster.status == "ACTIVE" and cluster.size == 2


def test_a_node_that_fails_fails_the_cluster_with_its_message(
    fake_nodes: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = fake_nodes
    req = ClusterCreate(name="c1", node_flavor="vm.small", size=1)
    accepted = service.create_cluster(world.store, world.settings, world.member, req)
    with world.store.session() as session:
        node = session.scalars(select(ClusterNode)).one()
        instance = session.get_one(Instance, node.instance_id)
        instance.status, instance.status_message = "ERROR", "create: the disk is full"
        session.execute(
            Operation.__table__.update()
            .where(Operation.resource_id == instance.id)
            .values(status="FAILED")
        )
    op = world.drive(accepted.operation.id)
    assert op.status == "FAILED" and op.error_code == "node_failed"
    assert "the disk is full" in (op.error_message or "")
    cluster = service.get_cluster(world.store, world.member, "c1")
    assert cluster.status == "ERROR" and cluster.nodes[0].status == "ERROR"
    # an ERROR cluster can be deleted
    op = world.drive(
        service.delete_cluster(world.store, world.settings, world.member, "c1").operation.id
    )
    assert op.status == "SUCCEEDED", op.error_message


def test_a_node_hosts_podman_calls_carry_its_key_and_publish_on_the_nodes_address() -> None:
    """The container driver on a cluster node: ``podman --url … --identity KEY``, no
    ``--runtime`` (a remote client has none), ports published on the node's own address."""
    url = "ssh://root@127.0.0.1:30001/run/podman/podman.sock"
    ref = HostRef(
        id="h",
        name="c1-0",
        compute_type=ComputeType.CONTAINER,
        uri=url,
        settings={**service.NODE_POOL_SETTINGS, "identity_file": "/k/id_ed25519"},
    )
    driver = PodmanDriver(ref)
    assert driver._base_cmd() == ["podman", "--url", url, "--identity", "/k/id_ed25519"]
    spec = InstanceSpec(
        instance_id="i1",
        name="pg",
        image=ImageArtifact(name="postgresql-15", ref="localhost/pg:1", rootfs=None),
        vcpus=1,
        ram_mb=512,
        disk_gb=1,
        ports=(PortMapping("postgresql", 5432, 30005),),
    )
    argv = driver._run_args(spec)
    assert "--runtime" not in argv
    assert argv[argv.index("-p") + 1] == "0.0.0.0:30005:5432/tcp"
    local = PodmanDriver(
        HostRef(id="l", name="l", compute_type=ComputeType.CONTAINER, uri="local://")
    )
    assert local._run_args(spec)[local._run_args(spec).index("--runtime") + 1] == "runc"
    assert local._run_args(spec)[local._run_args(spec).index("-p") + 1].startswith("127.0.0.1:")


# -- bare-metal nodes ----------------------------------------------------------------------------
def _bm_node(
    world: World, *, ssh: bool = True, block: bool = True, address: str = "127.0.0.1"
) -> FakeNode:
    """Node n1 enrolled and available, its port map the lab's: guest 22 forwarded to a port
    of ``address``, and a block of NODE_PORTS guest ports forwarded 1:1."""
    enrolled = world.enroll("n1")
    fake = CLOUD.nodes["n1"]
    world.play_the_ramdisk(fake)
    assert world.drive(enrolled).status == "SUCCEEDED"
    port_map = dict(world.node("n1").port_map)
    if ssh:
        port_map["22"] = {"host": address, "port": world.port_base + 92}
    if block:
        for port in _bm_block(world):
            port_map[str(port)] = {"host": address, "port": port}
    with world.store.session() as session:
        session.execute(update(Node).where(Node.name == "n1").values(port_map=port_map))
    return fake


def _bm_block(world: World) -> range:
    return range(world.port_base + 60, world.port_base + 60 + service.NODE_PORTS)


def test_a_bare_metal_node_is_reached_through_its_port_map(world: World) -> None:
    _bm_node(world)
    cluster_id = _create(world, node_flavor="baremetal.small")
    with world.store.session() as session:
        node = session.scalars(
            select(ClusterNode).where(ClusterNode.cluster_id == cluster_id)
        ).one()
        instance = session.get_one(Instance, node.instance_id)
        assert instance.compute_type == "baremetal"
        assert node.ssh_port == world.port_base + 92  # the node's forward of its sshd
        assert (node.port_range_start, node.port_range_end) == (
            _bm_block(world).start,
            _bm_block(world).stop - 1,
        )
        rows = session.scalars(
            select(PortAllocation).where(PortAllocation.instance_id == instance.id)
        )
        ports = {p.name: (p.guest_port, p.host_port, p.machine) for p in rows}
    assert world.node("n1").instance_id == instance.id  # the node is taken
    assert ports["ssh"] == (22, world.port_base + 92, "local")
    for port in _bm_block(world):  # the network's 1:1 forwards, recorded as the node's
        assert ports[f"fwd-{port}"] == (port, port, "local")
    out = service.get_cluster(world.store, world.member, "c1")
    assert out.node_flavor == "baremetal.small" and out.nodes[0].ssh_port == world.port_base + 92


@pytest.mark.parametrize(
    ("node", "code"),
    [
        ({"ssh": False}, "no_free_port"),  # no forward of guest port 22
        ({"block": False}, "no_port_block"),  # no block of 1:1 forwards for containers
        ({"address": "10.20.30.40"}, "node_host_remote"),  # reached on another machine
    ],
)
def test_a_bare_metal_node_it_cannot_reach_is_refused_and_leaves_nothing(
    world: World, node: dict[str, object], code: str
) -> None:
    _bm_node(world, **node)  # type: ignore[arg-type]
    before = _counts(world)
    with pytest.raises((NoValidHost, Conflict)) as info:
        _create(world, node_flavor="baremetal.small")
    assert getattr(info.value, "code", None) == code
    assert getattr(info.value, "status", 409) == 409
    assert _counts(world) == before
    assert world.node("n1").instance_id is None  # the node is not taken


def test_a_bare_metal_cluster_deploys_registers_and_cleans_its_node(fake_nodes: World) -> None:
    world = fake_nodes
    fake = _bm_node(world)
    # the podman-host image's whole-disk format, as a build would have made it
    disk = wholedisk.disk_image_path(load_recipe(service.NODE_IMAGE), world.settings.images_dir)
    planted = wholedisk.disk_image_path(load_recipe("postgresql-15"), world.settings.images_dir)
    disk.write_bytes(planted.read_bytes())
    sha = planted.with_name(f"{planted.name}.sha256").read_text().split()[0]
    disk.with_name(f"{disk.name}.sha256").write_text(f"{sha}  {disk.name}\n")

    def sshd_boots(node: FakeNode) -> None:  # the deployed disk's sshd, behind port 22's forward
        node.services = [_listen(world.port_base + 92)]

    fake.on_disk_boot = sshd_boots
    req = ClusterCreate(name="c1", node_flavor="baremetal.small", size=1)
    accepted = service.create_cluster(world.store, world.settings, world.member, req)
    world.drive_all()
    op = world.drive(accepted.operation.id)
    assert op.status == "SUCCEEDED", op.error_message
    cluster = service.get_cluster(world.store, world.member, "c1")
    assert cluster.status == "ACTIVE" and [n.status for n in cluster.nodes] == ["ACTIVE"]
    assert world.node("n1").state == "active"
    assert fake.bundle is not None and "host_key" in fake.bundle  # the node's sshd key
    host = _hosts(world)["c1-0"]
    assert host.uri == f"ssh://root@127.0.0.1:{world.port_base + 92}/run/podman/podman.sock"
    assert (host.bind_address, host.port_range_start, host.port_range_end) == (
        "127.0.0.1",
        _bm_block(world).start,
        _bm_block(world).stop - 1,
    )
    [conn] = service.connect(world.store, world.settings, world.member, "c1")
    assert conn.url == host.uri and conn.known_hosts.startswith(
        f"[127.0.0.1]:{world.port_base + 92} "
    )

    fake.shut_down()
    gone = service.delete_cluster(world.store, world.settings, world.member, "c1")
    world.drive_all()
    op = world.drive(gone.operation.id)
    assert op.status == "SUCCEEDED", op.error_message
    node = world.node("n1")
    assert (node.state, node.instance_id) == ("available", None)  # cleaned for the next tenant
    assert service.list_clusters(world.store, world.member) == []


def test_a_vm_host_on_another_machine_is_refused_and_leaves_nothing(world: World) -> None:
    with world.store.session() as session:
        session.execute(
            update(Host)
            .where(Host.name == "vm-host")
            .values(uri="qemu+ssh://root@db7/system", machine="db7")
        )
    before = _counts(world)
    with pytest.raises(Conflict) as info:
        _create(world)
    assert info.value.code == "node_host_remote" and "db7" in str(info.value)
    assert _counts(world) == before
