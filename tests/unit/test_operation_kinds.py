"""Every operation kind, driven through its real steps against the fakes in milliseconds:
the happy path, failures, polling, a delete that supersedes a create, and a worker that dies
after the backend did its work (the next worker resumes without making a second object)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from oneplatform.baremetal import media
from oneplatform.baremetal import nodes as node_service
from oneplatform.bootstrap import enroll_lab_nodes
from oneplatform.compute import instances, ports
from oneplatform.compute.images import request_build
from oneplatform.compute.reconciler import request_repair
from oneplatform.dbaas import backups, failover, replicas, storage
from oneplatform.dbaas import service as dbaas
from oneplatform.dbaas.datastores.base import ConnInfo
from oneplatform.dbaas.datastores.features import Feature
from oneplatform.dbaas.reach import reach
from oneplatform.errors import BackendError, BackendUnavailable, Conflict, PlatformError
from oneplatform.ops.engine import Worker
from oneplatform.ops.kinds import all_kinds
from oneplatform.schemas.backups import BackupCreate
from oneplatform.schemas.databases import (
    DbInstanceCreate,
    MoveRequest,
    ReplicaCreate,
    ReplicaDetach,
    StorageResize,
    SwitchoverRequest,
)
from oneplatform.secrets import box_for
from oneplatform.store.models import (
    DbInstance,
    DbMember,
    DeployToken,
    Event,
    Host,
    Image,
    Instance,
    Node,
    Operation,
    PortAllocation,
)
from tests.fakes import CLOUD, FakeAgent, FakeNode, FakePostgreSQL, SimulatedCrash
from tests.world import World

IMAGE = "postgresql-15"
LATER = dt.timedelta(seconds=5)


# -- instances on containers and VMs --------------------------------------------------------------
@pytest.mark.parametrize("flavor", ["container.small", "vm.small"])
def test_create_loads_the_image_and_waits_for_the_ports(world: World, flavor: str) -> None:
    iid, op_id = world.create("web", flavor)
    op = world.drive(op_id)
    assert op.status == "SUCCEEDED" and op.intent == "create"
    row = world.instance(iid)
    assert (row.status, row.power_state) == ("ACTIVE", "running")
    assert list(CLOUD.objects) == [iid]
    assert CLOUD.objects[iid].listeners  # the readiness step found the ports open
    assert world.events(iid) == [(None, "BUILD"), ("BUILD", "ACTIVE")]


def test_create_waits_for_a_building_image_then_goes_on(world: World) -> None:
    with world.store.session() as session:
        session.execute(update(Image).values(status="BUILDING"))
    iid, op_id = world.create("web", "container.small")
    worker = Worker(world.store, world.settings, "w")
    worker.run_once()
    with world.store.session() as session:
        op = session.get_one(Operation, op_id)
        assert op.status == "RUNNING" and "waiting for image" in op.steps[0]["message"]
        session.execute(update(Image).values(status="READY"))
    assert world.drive(op_id).status == "SUCCEEDED"
    assert world.instance(iid).status == "ACTIVE"


def test_create_polls_until_the_backend_runs_it(world: World) -> None:
    CLOUD.boot_polls = 3
    iid, op_id = world.create("web", "container.small")
    assert world.drive(op_id).status == "SUCCEEDED"
    assert CLOUD.boot_polls == 0 and world.instance(iid).status == "ACTIVE"


def test_a_backend_failure_puts_the_instance_in_error_with_the_step(world: World) -> None:
    CLOUD.fail_next("create", BackendError("no space left on the host"))
    iid, op_id = world.create("web", "container.small")
    op = world.drive(op_id)
    assert (op.status, op.error_code) == ("FAILED", "backend_error")
    row = world.instance(iid)
    assert row.status == "ERROR"
    assert row.status_message == "create: no space left on the host"


def test_a_worker_killed_after_the_backend_created_resumes_without_a_second_object(
    world: World,
) -> None:
    CLOUD.crash_after("create")
    iid, op_id = world.create("web", "container.small")
    with pytest.raises(SimulatedCrash):
        world.drive(op_id)
    with world.store.session() as session:
        steps = {s["name"]: s["status"] for s in session.get_one(Operation, op_id).steps}
    assert steps["image"] == "done" and steps["create"] == "running"
    world.crash_over()
    assert world.drive(op_id).status == "SUCCEEDED"
    assert CLOUD.count("create") == 2 and list(CLOUD.objects) == [iid]


def test_a_start_that_never_comes_times_out(world: World) -> None:
    world.settings.ready_timeout_seconds = 0.0
    CLOUD.boot_polls = 10_000
    iid, op_id = world.create("web", "container.small")
    op = world.drive(op_id)
    assert (op.status, op.error_code) == ("FAILED", "timeout")
    assert world.instance(iid).status_message.startswith("wait_running: start did not happen")


@pytest.mark.parametrize(
    ("action", "force", "status", "power", "call"),
    [
        ("stop", False, "SHUTOFF", "stopped", "stop"),
        ("reboot", False, "ACTIVE", "running", "reboot"),
        ("reboot", True, "ACTIVE", "running", "force_reboot"),
    ],
)
def test_actions(
    world: World, action: str, force: bool, status: str, power: str, call: str
) -> None:
    iid, op_id = world.create("web", "vm.small")
    world.drive(op_id)
    accepted = instances.act(world.store, world.member, "web", action, force=force)
    assert accepted.operation.intent == "action"
    assert world.drive(accepted.operation.id).status == "SUCCEEDED"
    row = world.instance(iid)
    assert (row.status, row.power_state) == (status, power)
    assert CLOUD.count(call) == 1


def test_stop_then_start(world: World) -> None:
    iid, op_id = world.create("web", "container.small")
    world.drive(op_id)
    world.drive(instances.act(world.store, world.member, "web", "stop").operation.id)
    op = world.drive(instances.act(world.store, world.member, "web", "start").operation.id)
    assert op.status == "SUCCEEDED" and world.instance(iid).status == "ACTIVE"
    assert CLOUD.objects[iid].listeners


def test_resize_in_place(world: World) -> None:
    iid, op_id = world.create("web", "vm.small")
    world.drive(op_id)
    accepted = instances.resize(world.store, world.member, "web", "vm.medium")
    assert world.instance(iid).status == "RESIZE"
    assert world.drive(accepted.operation.id).status == "SUCCEEDED"
    row = world.instance(iid)
    assert (row.status, row.vcpus, row.ram_mb) == ("ACTIVE", 2, 2048)
    assert (CLOUD.objects[iid].vcpus, CLOUD.objects[iid].ram_mb) == (2, 2048)


def test_snapshot_leaves_the_status_alone(world: World) -> None:
    iid, op_id = world.create("web", "vm.small")
    world.drive(op_id)
    op = world.drive(instances.snapshot(world.store, world.member, "web", "s1").operation.id)
    assert op.status == "SUCCEEDED" and CLOUD.objects[iid].snapshots == ["s1"]
    assert world.instance(iid).status == "ACTIVE"


def test_delete_removes_the_object_and_gives_back_the_ports(world: World) -> None:
    iid, op_id = world.create("web", "container.small")
    world.drive(op_id)
    op = world.drive(instances.delete_instance(world.store, world.member, "web").operation.id)
    assert (op.status, op.intent) == ("SUCCEEDED", "delete")
    row = world.instance(iid)
    assert row.status == "DELETED" and row.deleted_at is not None
    assert CLOUD.objects == {}
    with world.store.session() as session:
        assert not session.scalars(select(PortAllocation)).all()


def test_a_delete_supersedes_a_create_in_flight(world: World) -> None:
    CLOUD.boot_polls = 5
    iid, create_op = world.create("web", "container.small")
    Worker(world.store, world.settings, "w").run_once()  # image, create; polls wait_running
    delete_op = instances.delete_instance(world.store, world.member, "web").operation.id
    world.drive_all()
    with world.store.session() as session:
        first = session.get_one(Operation, create_op)
        assert (first.status, first.error_code) == ("FAILED", "superseded")
        assert session.get_one(Operation, delete_op).status == "SUCCEEDED"
    assert world.instance(iid).status == "DELETED"  # the create's failure did not touch it
    assert CLOUD.objects == {}


# -- images ----------------------------------------------------------------------------------------
def test_image_build_loads_every_preloading_host(world: World) -> None:
    with world.store.session() as session:
        session.execute(update(Image).values(content_hash="stale"))
    accepted = request_build(world.store, world.admin, IMAGE)
    assert accepted.operation is not None and accepted.image.status == "BUILDING"
    assert world.drive(accepted.operation.id).status == "SUCCEEDED"
    with world.store.session() as session:
        image = session.scalars(select(Image)).one()
        hosts = {h.name: h.id for h in session.scalars(select(Host))}
    assert image.status == "READY" and "qcow2" in image.formats
    assert set(CLOUD.images) == {hosts["container-host"], hosts["vm-host"]}
    assert request_build(world.store, world.admin, IMAGE).operation is None  # built already


# -- nodes and bare metal ------------------------------------------------------------------------
def test_enroll_verifies_inspects_and_cleans_a_node(world: World) -> None:
    op_id = world.enroll("n1")
    world.play_the_ramdisk(CLOUD.nodes["n1"])
    op = world.drive(op_id)
    assert (op.status, op.intent, op.kind) == ("SUCCEEDED", "create", "node.enroll_provide")
    node = world.node("n1")
    assert (node.state, node.power_state) == ("available", "stopped")
    assert node.inventory["cpus"] == 2
    assert CLOUD.nodes["n1"].boots == ["cd"] and CLOUD.nodes["n1"].media_url is None
    with world.store.session() as session:
        host = session.get_one(Host, node.host_id)
        assert (host.enabled, host.vcpus, host.disk_gb) == (True, 2, 8)


def test_an_enrolled_lab_node_takes_the_labs_newer_port_map(world: World) -> None:
    """A lab made again forwards more guest ports (3306, 6379): the platform's next start
    gives its enrolled node the lab's port map instead of enrolling it again."""
    world.drive(world.enroll("n1", provide=False))
    assert set(world.node("n1").port_map) == {"5432", "8471"}
    ports_now = {"5432": 23000, "8471": 23001, "3306": 23002, "6379": 23003}
    lab = {"nodes": [{"name": "n1", "ports": ports_now}]}
    world.settings.bmlab_file.write_text(json.dumps(lab))
    assert enroll_lab_nodes(world.store, world.settings) == []
    assert world.node("n1").port_map == {
        g: {"host": "127.0.0.1", "port": port} for g, port in ports_now.items()
    }


def test_a_node_with_wrong_credentials_fails_to_verify(world: World) -> None:
    op = world.drive(world.enroll("n1", password="wrong"))
    assert op.status == "FAILED"
    node = world.node("n1")
    assert node.state == "verify failed" and "refused the credentials" in node.last_error
    # manage retries the verify once the credentials are right
    with world.store.session() as session:
        session.execute(update(Node).values(bmc_password_enc=""))
    again = node_service.act(world.store, world.admin, "n1", "manage")
    assert world.drive(again.operation.id).status == "SUCCEEDED"
    assert world.node("n1").state == "manageable"


def test_inspect_and_provide_from_manageable(world: World) -> None:
    world.drive(world.enroll("n1", provide=False))
    assert world.node("n1").state == "manageable"
    inspect = node_service.act(world.store, world.admin, "n1", "inspect")
    assert world.drive(inspect.operation.id).status == "SUCCEEDED"
    world.play_the_ramdisk(CLOUD.nodes["n1"])
    provide = node_service.act(world.store, world.admin, "n1", "provide")
    assert world.drive(provide.operation.id).status == "SUCCEEDED"
    assert world.node("n1").state == "available"


def test_a_database_on_bare_metal_deploys_then_cleans_the_node(world: World) -> None:
    enrolled = world.enroll("n1")
    fake = CLOUD.nodes["n1"]
    world.play_the_ramdisk(fake)
    world.drive(enrolled)
    world.serve_on_disk_boot(fake)
    created = dbaas.create_db(
        world.store,
        world.settings,
        world.member,
        DbInstanceCreate(name="pgbm", flavor="baremetal.small", databases=["app"]),
    )
    world.drive_all()
    assert dbaas.get_db(world.store, world.member, "pgbm").status == "ACTIVE"
    node = world.node("n1")
    assert node.state == "active" and node.instance_id is not None
    assert fake.boots == ["cd", "cd", "hdd"]  # cleaned at enrollment, deployed, booted
    assert world.pg.databases == {"app"}
    instance_id = node.instance_id
    fake.shut_down()
    deleted = dbaas.delete_db(world.store, world.member, created.instance.id)
    world.drive_all()
    assert world.drive(deleted.operation.id).status == "SUCCEEDED"
    node = world.node("n1")
    assert (node.state, node.instance_id) == ("available", None)
    assert world.instance(instance_id).status == "DELETED"


def test_a_failed_deploy_fails_the_node_and_the_instance(world: World) -> None:
    enrolled = world.enroll("n1")
    world.play_the_ramdisk(CLOUD.nodes["n1"])
    world.drive(enrolled)
    world.play_the_ramdisk(CLOUD.nodes["n1"], fail_at="write")
    iid, op_id = world.create("bm1", "baremetal.small")
    op = world.drive(op_id)
    assert (op.status, op.error_code) == ("FAILED", "deploy_failed")
    assert world.instance(iid).status == "ERROR"
    node = world.node("n1")
    assert node.state == "deploy failed" and "disk vanished" in node.last_error
    _runs_are_over(world)
    # deleting the instance cleans the node and makes it available again
    world.play_the_ramdisk(CLOUD.nodes["n1"])
    delete = instances.delete_instance(world.store, world.member, "bm1")
    assert world.drive(delete.operation.id).status == "SUCCEEDED"
    assert world.node("n1").state == "available"


def _runs_are_over(world: World) -> None:
    """Every deploy token is over (done or closed) and no deploy ISO is left."""
    with world.store.session() as session:
        statuses = {row.status for row in session.scalars(select(DeployToken))}
    assert statuses and statuses <= {"done", "closed"}, statuses
    assert not list((world.settings.home / "deploy").glob("*.iso"))


def test_a_deploy_token_serves_one_run_and_its_bundle_once(world: World) -> None:
    enrolled = world.enroll("n1")
    fake = CLOUD.nodes["n1"]
    world.play_the_ramdisk(fake)
    world.drive(enrolled)
    seen: list[str] = []
    ramdisk = fake.on_media_boot
    assert ramdisk is not None

    def remember(node: FakeNode, url: str) -> None:
        seen.append(url.split("/v1/deploy/")[1].split("/")[0])
        ramdisk(node, url)

    fake.on_media_boot = remember
    world.serve_on_disk_boot(fake)
    _iid, op_id = world.create("bm1", "baremetal.small")
    assert world.drive(op_id).status == "SUCCEEDED"
    (token,) = seen
    assert media.bundle_text(world.store, world.settings, token) is None  # served once
    assert media.render_manifest(world.store, world.settings, token) is None  # run over
    _runs_are_over(world)
    fake.shut_down()
    delete = instances.delete_instance(world.store, world.member, "bm1")
    assert world.drive(delete.operation.id).status == "SUCCEEDED"
    assert len(seen) == 2 and seen[1] != token  # the cleaning got a token of its own
    _runs_are_over(world)


# -- databases -------------------------------------------------------------------------------------
def test_db_create_initializes_then_restart_and_delete(world: World) -> None:
    db_id = world.create_db()
    world.drive_all()
    out = dbaas.get_db(world.store, world.member, "pg1")
    assert (out.status, out.health) == ("ACTIVE", "HEALTHY")
    assert world.pg.databases == {"app"} and world.pg.users["alice"][1] == {"app"}
    with world.store.session() as session:
        assert session.get_one(DbInstance, db_id).pending_enc is None  # passwords forgotten
    restart = dbaas.restart_db(world.store, world.settings, world.member, "pg1")
    assert world.drive(restart.operation.id).status == "SUCCEEDED"
    (obj,) = CLOUD.objects.values()
    assert obj.agent is not None and obj.agent.restarts == 1
    delete = dbaas.delete_db(world.store, world.member, "pg1")
    world.drive_all()
    assert world.drive(delete.operation.id).status == "SUCCEEDED"
    assert CLOUD.objects == {}
    with world.store.session() as session:
        assert session.get_one(DbInstance, db_id).status == "DELETED"


def test_an_instance_whose_ports_are_released_is_unreachable_clearly(world: World) -> None:
    """A delete under way releases the compute's ports: a step reaching the database then
    gets a clear invalid_state (it crashed with a KeyError once)."""
    db_id = world.create_db()
    world.drive_all()
    with world.store.session() as session:
        db = session.get_one(DbInstance, db_id)
        assert reach(session, db, box_for(world.settings)).engine.port > 0
        ports.release(session, db.instance_id)
    with world.store.session() as session, pytest.raises(Conflict, match="no endpoints"):
        reach(session, session.get_one(DbInstance, db_id), box_for(world.settings))


def test_db_create_fails_when_its_compute_fails(world: World) -> None:
    CLOUD.fail_next("create", BackendError("the host is full"))
    db_id = world.create_db()
    world.drive_all()
    with world.store.session() as session:
        db = session.get_one(DbInstance, db_id)
        assert db.status == "ERROR" and "compute" in db.status_message


# -- replicas, switchover, moves (the agents' replication faked; the real: tests/e2e) --------
@pytest.fixture
def group(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    """pg1 (a container) ACTIVE, with one replica pg1-r1 on a VM, ACTIVE."""
    monkeypatch.setattr(FakeAgent, "replayed", 6000)
    monkeypatch.setattr(FakeAgent, "demote_clean", True)
    world.create_db()
    world.drive_all()
    accepted = replicas.create_replica(
        world.store, world.settings, world.member, "pg1", ReplicaCreate(flavor="vm.small")
    )
    assert world.drive(accepted.operation.id).status == "SUCCEEDED"
    return world


def _roles(world: World) -> list[tuple[str, str, str, str]]:
    return [
        (m.name, m.role, m.compute_type, m.state)
        for m in replicas.list_members(world.store, world.settings, world.member, "pg1")
    ]


def _agent(world: World, member: str) -> FakeAgent:
    with world.store.session() as session:
        instance_id = session.scalars(
            select(DbMember.instance_id).where(DbMember.name == member)
        ).one()
    agent = CLOUD.objects[instance_id].agent
    assert agent is not None
    return agent


def test_a_replica_is_made_on_any_flavor_and_seeded_from_its_primary(group: World) -> None:
    assert _roles(group) == [
        ("pg1", "primary", "container", "ACTIVE"),
        ("pg1-r1", "replica", "vm", "ACTIVE"),
    ]
    assert "role" in _agent(group, "pg1").calls  # the replication role made on the primary
    with group.store.session() as session:
        db = session.scalars(select(DbInstance)).one()
        bundle = box_for(group.settings).decrypt(_bundle(session, "pg1-r1"))
        standby = json.loads(bundle)["standby"]
    assert standby["user"] == f"onep_repl_{db.id}" and standby["port"] == 8334
    assert standby["host"] == "10.0.2.100"  # a VM reaches the hub through its forward
    assert db.repl_password_enc and standby["password"] not in db.repl_password_enc
    assert "from_backup" not in standby  # no backup yet: pg_basebackup from the primary
    (replica,) = [
        m
        for m in replicas.list_members(group.store, group.settings, group.member, "pg1")
        if m.role == "replica"
    ]
    assert replica.status_message.endswith("seeded from the primary (pg_basebackup)")


def test_a_replica_is_ready_only_once_it_received_what_the_primary_wrote(
    group: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver that connects and is refused at once (WAL the primary no longer holds)
    says "streaming" for an instant: the replica stays BUILD until it has received up to
    the primary's position (5000 in the fakes), and the create ends with a timeout."""
    monkeypatch.setattr(FakeAgent, "received", 4000)
    monkeypatch.setattr(group.settings, "ready_timeout_seconds", 0.5)  # 2 s to stream
    accepted = replicas.create_replica(
        group.store, group.settings, group.member, "pg1", ReplicaCreate(flavor="container.small")
    )
    op = group.drive(accepted.operation.id)
    assert (op.status, op.error_code) == ("FAILED", "timeout"), op.error_message
    assert "streaming did not happen" in (op.error_message or "")  # its receiver "streams"
    monkeypatch.setattr(FakeAgent, "received", 5000)  # caught up: a new replica is made
    again = replicas.create_replica(
        group.store, group.settings, group.member, "pg1", ReplicaCreate(flavor="container.small")
    )
    assert group.drive(again.operation.id).status == "SUCCEEDED"


def _bundle(session: Session, member: str) -> str:
    instance_id = session.scalars(select(DbMember.instance_id).where(DbMember.name == member)).one()
    return session.get_one(Instance, instance_id).bundle_enc or ""


def test_a_switchover_swaps_the_roles_and_the_database_keeps_its_endpoint(group: World) -> None:
    before = dbaas.get_db(group.store, group.member, "pg1")
    op = replicas.switchover(group.store, group.settings, group.member, "pg1", SwitchoverRequest())
    assert dbaas.get_db(group.store, group.member, "pg1").status == "SWITCHOVER"
    assert group.drive(op.id).status == "SUCCEEDED"
    after = dbaas.get_db(group.store, group.member, "pg1")
    assert (after.status, after.flavor, after.compute_type) == ("ACTIVE", "vm.small", "vm")
    assert (after.id, after.endpoint, after.read_only_endpoint) == (
        before.id,
        before.endpoint,
        before.read_only_endpoint,
    )
    assert _roles(group) == [
        ("pg1-r1", "primary", "vm", "ACTIVE"),
        ("pg1", "replica", "container", "ACTIVE"),
    ]
    old, new = _agent(group, "pg1"), _agent(group, "pg1-r1")
    assert old.calls[-1] == "demote" and new.role == "primary"
    # before the pause: the target streams only, the primary's completed WAL is archived
    assert old.calls[-2] == "archive completed"
    assert new.calls.index("prepare") == new.calls.index("promote") - 1


def test_a_switchover_waits_for_a_member_s_engine_that_is_starting(
    group: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Back to back: the former primary restarts as a standby after the first switchover;
    the second waits for it (bounded), the third finds it never comes back: nothing changes."""
    target = _agent(group, "pg1-r1")
    target.starting = 3
    started = replicas.switchover(
        group.store, group.settings, group.member, "pg1", SwitchoverRequest()
    )
    assert group.drive(started.id).status == "SUCCEEDED"
    assert target.calls.count("not running") == 3 and target.role == "primary"
    assert target.calls.index("not running") < target.calls.index("prepare")
    monkeypatch.setattr(replicas, "ENGINE_WAIT_S", 0.0)
    _agent(group, "pg1").starting = 10**6
    started = replicas.switchover(
        group.store, group.settings, group.member, "pg1", SwitchoverRequest()
    )
    op = group.drive(started.id)
    assert (op.status, op.error_code) == ("FAILED", "timeout")
    assert "engine start did not happen" in (op.error_message or "")
    assert _roles(group)[0][:2] == ("pg1-r1", "primary") and target.role == "primary"


def test_a_target_that_does_not_catch_up_changes_nothing(
    group: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeAgent, "replayed", 4000)  # behind the primary's last checkpoint
    started = replicas.switchover(
        group.store, group.settings, group.member, "pg1", SwitchoverRequest(to="pg1-r1")
    )
    op = group.drive(started.id)
    assert (op.status, op.error_code) == ("FAILED", "switchover_timeout")
    db = dbaas.get_db(group.store, group.member, "pg1")
    assert db.status == "ACTIVE" and "nothing was changed" in db.status_message
    assert _roles(group)[0][:2] == ("pg1", "primary")
    old = _agent(group, "pg1")
    demoted = old.calls.index("demote")
    assert old.calls[demoted + 1] == "promote" and old.role == "primary"  # promoted back
    assert _agent(group, "pg1-r1").role == "standby"


def test_a_primary_that_does_not_stop_cleanly_is_not_switched_over(
    group: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeAgent, "demote_clean", False)
    started = replicas.switchover(
        group.store, group.settings, group.member, "pg1", SwitchoverRequest()
    )
    op = group.drive(started.id)
    assert (op.status, op.error_code) == ("FAILED", "switchover_failed")
    assert _roles(group)[0][:2] == ("pg1", "primary")
    assert _agent(group, "pg1-r1").calls.count("promote") == 0


def test_a_move_keeps_the_database_and_retires_its_former_primary(group: World) -> None:
    before = dbaas.get_db(group.store, group.member, "pg1")
    former_agent = _agent(group, "pg1")
    op = replicas.move(
        group.store, group.settings, group.member, "pg1", MoveRequest(flavor="vm.medium")
    )
    assert dbaas.get_db(group.store, group.member, "pg1").status == "RESIZE"
    assert group.drive(op.id).status == "SUCCEEDED"
    # retired only once what its shutdown closed is archived (asked after its demote)
    demoted = former_agent.calls.index("demote")
    assert "archive completed" in former_agent.calls[demoted:], former_agent.calls
    group.drive_all()
    after = dbaas.get_db(group.store, group.member, "pg1")
    assert (after.status, after.flavor, after.compute_type) == ("ACTIVE", "vm.medium", "vm")
    assert (after.id, after.endpoint) == (before.id, before.endpoint)
    assert _roles(group) == [
        ("pg1-r2", "primary", "vm", "ACTIVE"),
        ("pg1-r1", "replica", "vm", "ACTIVE"),
    ]
    with group.store.session() as session:
        former = session.scalars(select(DbMember).where(DbMember.name == "pg1")).one()
        assert former.status == "DELETED"
        assert session.get_one(Instance, former.instance_id).status == "DELETED"


def test_replica_requests_that_cannot_be_done_are_refused_with_nothing_made(
    group: World,
) -> None:
    cases = [
        (lambda: replicas.delete_replica(group.store, group.member, "pg1"), "is_primary"),
        (
            lambda: replicas.move(
                group.store,
                group.settings,
                group.member,
                "pg1",
                MoveRequest(flavor="container.small"),
            ),
            "same_flavor",
        ),
        (
            lambda: replicas.create_replica(
                group.store, group.settings, group.member, "pg1", ReplicaCreate(name="pg1-r1")
            ),
            "replica_exists",
        ),
    ]
    for call, code in cases:
        with pytest.raises(PlatformError) as err:
            call()
        assert err.value.code == code
    assert len(_roles(group)) == 2
    deleted = replicas.delete_replica(group.store, group.member, "pg1-r1")
    assert group.drive(deleted.operation.id).status == "SUCCEEDED"
    assert _roles(group) == [("pg1", "primary", "container", "ACTIVE")]


def test_a_create_with_replicas_ends_once_the_whole_group_streams(world: World) -> None:
    accepted = dbaas.create_db(
        world.store,
        world.settings,
        world.member,
        DbInstanceCreate(
            name="ha", flavor="container.small", replicas=2, replica_flavor="vm.small"
        ),
    )
    assert world.drive(accepted.operation.id).status == "SUCCEEDED"
    shown = dbaas.get_db(world.store, world.member, "ha")
    assert shown.status == "ACTIVE"
    assert [(m.name, m.role, m.compute_type, m.state) for m in shown.members] == [
        ("ha", "primary", "container", "ACTIVE"),
        ("ha-r1", "replica", "vm", "ACTIVE"),
        ("ha-r2", "replica", "vm", "ACTIVE"),
    ]


def test_a_database_delete_takes_its_replicas_with_it(group: World) -> None:
    delete = dbaas.delete_db(group.store, group.member, "pg1")
    assert group.drive(delete.operation.id).status == "SUCCEEDED"
    group.drive_all()
    assert CLOUD.objects == {}
    with group.store.session() as session:
        assert {m.status for m in session.scalars(select(DbMember))} == {"DELETED"}
        assert session.scalars(select(DbInstance.rw_port)).one() is None


def test_a_silent_primary_is_fenced_and_its_replica_promoted(
    group: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary = _agent(group, "pg1")
    port = next(m.endpoint for m in dbaas.get_db(group.store, group.member, "pg1").members).port

    def ping(self: object, conn: ConnInfo, timeout: float = 10.0) -> None:
        if conn.port == port:
            raise BackendUnavailable("no answer")

    monkeypatch.setattr(FakePostgreSQL, "ping", ping)
    with group.store.session() as session:
        old_instance = session.get_one(
            DbInstance, dbaas.get_db(group.store, group.member, "pg1").id
        ).instance_id
    assert request_repair(group.store, old_instance or "", "test") is None  # held
    down: dict[str, float] = {}
    assert failover.watch_once(group.store, group.settings, down) == []  # it answers
    primary.close()
    group.settings.failover_grace_seconds = 0.0
    (op_id,) = failover.watch_once(group.store, group.settings, down)
    assert dbaas.get_db(group.store, group.member, "pg1").status == "FAILOVER"
    assert group.drive(op_id).status == "SUCCEEDED"
    group.drive_all()  # the new replica
    shown = dbaas.get_db(group.store, group.member, "pg1")
    assert (shown.status, shown.compute_type) == ("ACTIVE", "vm")
    assert [(m.name, m.role, m.compute_type, m.state) for m in shown.members] == [
        ("pg1-r1", "primary", "vm", "ACTIVE"),
        ("pg1-r2", "replica", "container", "ACTIVE"),  # on the former primary's flavor
    ]
    assert CLOUD.count("stop") >= 1  # fenced through the compute API
    with group.store.session() as session:
        assert session.get_one(Instance, old_instance).status == "DELETED"
        messages = [
            e.message for e in session.scalars(select(Event).where(Event.resource_id == shown.id))
        ]
    assert any(m.startswith("failover: pg1 fenced") and "pg1-r1 promoted" in m for m in messages)


def test_a_datastore_without_failover_has_its_silent_primary_repaired_not_failed_over(
    group: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakePostgreSQL, "unsupported", {Feature.FAILOVER: "not in this test"})
    primary = _agent(group, "pg1")
    with group.store.session() as session:
        old_instance = session.get_one(
            DbInstance, dbaas.get_db(group.store, group.member, "pg1").id
        ).instance_id
    monkeypatch.setattr(FakePostgreSQL, "ping", _silent)
    primary.close()
    group.settings.failover_grace_seconds = 0.0
    down: dict[str, float] = {}
    assert failover.watch_once(group.store, group.settings, down) == []
    assert failover.watch_once(group.store, group.settings, down) == []
    assert dbaas.get_db(group.store, group.member, "pg1").status == "ACTIVE"
    assert request_repair(group.store, old_instance or "", "test") is not None  # not held


def _silent(self: object, conn: ConnInfo, timeout: float = 10.0) -> None:
    raise BackendUnavailable("no answer")


def test_db_storage_grow_grows_the_volume_then_the_filesystem(world: World) -> None:
    """The storage growth's steps (its refusals and failures: tests/unit/test_storage_growth.py)."""
    world.create_db()
    world.drive_all()
    accepted = storage.resize_storage(
        world.store, world.settings, world.member, "pg1", StorageResize(size_gb=2)
    )
    assert world.drive(accepted.operation.id).status == "SUCCEEDED"
    (instance_id,) = CLOUD.objects
    assert CLOUD.volume_gb[(instance_id, "data")] == 2
    out = dbaas.get_db(world.store, world.member, "pg1")
    assert (out.status, out.size_gb) == ("ACTIVE", 2)


def test_every_operation_kind_is_driven_by_this_module() -> None:
    driven = {
        "instance.create",
        "instance.stop",
        "instance.start",
        "instance.reboot",
        "instance.resize",
        "instance.snapshot",
        "instance.repair",
        "instance.delete",
        "instance.create.baremetal",
        "instance.delete.baremetal",
        "image.build",
        "node.enroll",
        "node.enroll_provide",
        "node.verify",
        "node.inspect",
        "node.clean",
        "db.create",
        "db.restart",
        "db.delete",
        "db.replica.create",
        "db.replica.delete",
        "db.switchover",
        "db.move",
        "db.failover",
        "db.detach",
        "db.storage.grow",
        "backup.create",
        "backup.delete",
        # driven in tests/unit/test_clusters.py
        "cluster.create",
        "cluster.resize",
        "cluster.delete",
    }
    registered = {k.name for k in all_kinds() if not k.name.startswith("test.")}
    assert registered == driven


def test_a_detached_replica_is_a_database_of_its_own(
    group: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replica's agent takes a bundle of a new identity (sealed with the group's secret)
    and is promoted; the member is the new database's primary, on its compute, with its own
    endpoints and agent secret; the group is left with its primary."""
    made = _with_backups(group, monkeypatch)  # the new database gets a repository of its own
    with group.store.session() as session:
        session.scalars(select(DbInstance)).one().repo_bucket = "onep-db-parent"
    parent = dbaas.get_db(group.store, group.member, "pg1")
    accepted = dbaas.detach_replica(
        group.store, group.settings, group.member, "pg1-r1", ReplicaDetach(name="pg2")
    )
    assert accepted.instance.status == "BUILD" and accepted.instance.name == "pg2"
    assert [
        m.state for m in replicas.list_members(group.store, group.settings, group.member, "pg1")
    ][1] == "DETACHING"
    with pytest.raises(Conflict) as busy:  # the group cannot go while its replica is leaving
        dbaas.delete_db(group.store, group.member, "pg1")
    assert busy.value.code == "invalid_state"
    op = group.drive(accepted.operation.id)
    assert op.status == "SUCCEEDED", op.error_message
    assert [s["name"] for s in op.steps] == ["repository", "detach", "adopt", "endpoint", "finish"]
    new = dbaas.get_db(group.store, group.member, "pg2")
    assert (new.status, new.compute_type, new.flavor) == ("ACTIVE", "vm", "vm.small")
    assert [(m.name, m.role, m.state) for m in new.members] == [("pg2", "primary", "ACTIVE")]
    assert new.endpoint != parent.endpoint and new.id != parent.id
    assert _roles(group) == [("pg1", "primary", "container", "ACTIVE")]
    agent = _agent(group, "pg2")
    assert agent.role == "primary" and agent.bundle["instance_id"] == new.id
    assert "standby" not in agent.bundle
    assert (
        agent.bundle["backup"]["bucket"] == f"onep-db-{new.id}"
        and made[-1][0] == f"onep-db-{new.id}"
    )
    with group.store.session() as session:
        rows = {d.id: d for d in session.scalars(select(DbInstance))}
        assert rows[new.id].agent_secret_enc != rows[parent.id].agent_secret_enc
        instance = session.get_one(Instance, rows[new.id].instance_id)
        kept = json.loads(box_for(group.settings).decrypt(instance.bundle_enc or ""))
    assert kept == agent.bundle  # what a re-created compute is given: the same bundle


def test_detach_requests_that_cannot_be_done_are_refused(group: World) -> None:
    for name, req, code in [
        ("pg1", ReplicaDetach(), "is_primary"),
        ("pg1-r1", ReplicaDetach(name="pg1"), "db_instance_exists"),
        ("nope", ReplicaDetach(), "replica_not_found"),
    ]:
        with pytest.raises(PlatformError) as refused:
            dbaas.detach_replica(group.store, group.settings, group.member, name, req)
        assert refused.value.code == code, name
    stranger = dataclasses.replace(group.member, project_id="another-project")
    with pytest.raises(PlatformError) as refused:  # another project's replica is not there
        dbaas.detach_replica(group.store, group.settings, stranger, "pg1-r1", ReplicaDetach())
    assert refused.value.code == "replica_not_found"
    assert _roles(group)[1][3] == "ACTIVE"  # nothing changed
    with group.store.session() as session:
        assert len(session.scalars(select(DbInstance)).all()) == 1


def _with_backups(world: World, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """The world's databases get repositories (the store's admin calls recorded)."""
    made: list[tuple[str, ...]] = []

    class Admin:
        def __init__(self, _settings: object) -> None:
            pass

        def create_repository(self, *args: str) -> None:
            made.append(args)

        def remove_identity(self, user: str) -> None:
            pass

    monkeypatch.setattr("oneplatform.dbaas.operations.StoreAdmin", Admin)
    world.settings.backups = True
    return made


def test_a_replica_of_a_database_with_a_backup_is_seeded_from_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_backups(world, monkeypatch)
    world.create_db()
    world.drive_all()
    full = backups.create_backup(
        world.store, world.settings, world.member, "pg1", BackupCreate(type="full", name="b1")
    )
    assert world.drive(full.operation.id).status == "SUCCEEDED"
    accepted = replicas.create_replica(
        world.store, world.settings, world.member, "pg1", ReplicaCreate(flavor="container.small")
    )
    assert world.drive(accepted.operation.id).status == "SUCCEEDED"
    with world.store.session() as session:
        bundle = json.loads(box_for(world.settings).decrypt(_bundle(session, "pg1-r1")))
    assert bundle["standby"]["from_backup"] is True and bundle["backup"]["bucket"]
    (replica,) = [
        m
        for m in replicas.list_members(world.store, world.settings, world.member, "pg1")
        if m.role == "replica"
    ]
    assert replica.status_message.endswith("seeded from the latest backup")


def test_backups_are_taken_by_the_agent_recorded_and_expired(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """backup.create follows the agent's job and keeps what the repository says of it;
    backup.delete expires it in the repository (pgBackRest on the host, faked here)."""
    expired: list[str] = []

    class Tool:
        def expire(self, label: str | None, in_flight: int) -> None:
            assert in_flight == 0  # no other backup of pg1 runs
            if label in CLOUD_LABELS and label not in expired:
                expired.append(label)

        def destroy(self) -> None:
            raise AssertionError("the instance lives: its repository stays")

    made = _with_backups(world, monkeypatch)
    monkeypatch.setattr("oneplatform.dbaas.backup_ops.repository_tool", lambda *a: Tool())
    world.create_db()
    world.drive_all()
    assert made and made[0][0].startswith("onep-db-")  # its bucket, and keys of its own
    full = backups.create_backup(
        world.store, world.settings, world.member, "pg1", BackupCreate(type="full", name="b1")
    )
    assert world.drive(full.operation.id).status == "SUCCEEDED"
    incr = backups.create_backup(
        world.store, world.settings, world.member, "pg1", BackupCreate(type="incr", name="b2")
    )
    assert world.drive(incr.operation.id).status == "SUCCEEDED"
    b1, b2 = (backups.get_backup(world.store, world.member, n) for n in ("b1", "b2"))
    assert (b1.status, b1.type, b1.size_bytes, b1.parent) == ("COMPLETED", "full", 4096, None)
    assert (b2.type, b2.parent, b2.wal_start) == ("incr", "b1", "000000010000000000000002")
    (obj,) = CLOUD.objects.values()
    assert obj.agent is not None
    CLOUD_LABELS[:] = obj.agent.labels
    with pytest.raises(Conflict, match="b2"):
        backups.delete_backup(world.store, world.member, "b1")
    deleted = backups.delete_backup(world.store, world.member, "b2")
    assert world.drive(deleted.operation.id).status == "SUCCEEDED"
    assert expired == [obj.agent.labels[1]]
    assert [b.name for b in backups.list_backups(world.store, world.member)] == ["b1"]
    with pytest.raises(Conflict, match="only full backup") as refused:  # pgBackRest keeps one
        backups.delete_backup(world.store, world.member, "b1")
    assert refused.value.code == "last_full_backup"
    window = dbaas.get_db(world.store, world.member, "pg1")
    assert window.restorable_from == b1.finished_at


CLOUD_LABELS: list[str] = []
