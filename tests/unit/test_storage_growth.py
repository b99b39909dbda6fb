"""Storage growth (``onep db resize``) through its real steps against the fakes: every member's
volume grows, then its filesystem; refusals change nothing; a failure leaves the database
serving. The real thing on containers and VMs: tests/e2e/test_db_cli.py and
tests/e2e/test_engines.py (a MariaDB restored onto a VM)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select, update

from oneplatform.compute.capabilities import Capability
from oneplatform.compute.catalog import describe_compute_type
from oneplatform.compute.drivers import driver_class
from oneplatform.dbaas import health, replicas, storage
from oneplatform.dbaas import service as dbaas
from oneplatform.dbaas.states import DATABASES, DbStatus
from oneplatform.errors import BackendError, Conflict, InvalidInput
from oneplatform.schemas.compute import ComputeType
from oneplatform.schemas.databases import (
    DbInstanceCreate,
    ReplicaCreate,
    StorageAutogrow,
    StorageResize,
)
from oneplatform.store.models import DbInstance, DbMember, Host, Instance, Operation
from tests.fakes import CLOUD, FakeAgent
from tests.world import World

GIB = 1024**3


@pytest.fixture
def pg1(world: World) -> World:
    """pg1: an ACTIVE PostgreSQL on a container, 1 GB of storage."""
    world.create_db()
    world.drive_all()
    return world


def _resize(world: World, size_gb: int, name: str = "pg1") -> str:
    accepted = storage.resize_storage(
        world.store, world.settings, world.member, name, StorageResize(size_gb=size_gb)
    )
    assert accepted.instance.status == "RESIZE"
    return accepted.operation.id


def _instances(world: World) -> list[Instance]:
    with world.store.session() as session:
        ids = session.scalars(select(DbMember.instance_id).where(DbMember.deleted_at.is_(None)))
        rows = [session.get_one(Instance, i) for i in ids]
        for row in rows:
            session.expunge(row)
        return rows


def _hosts(world: World) -> list[Host]:
    with world.store.session() as session:
        rows = list(session.scalars(select(Host)))
        for row in rows:
            session.expunge(row)
        return rows


def _operations(world: World) -> int:
    with world.store.session() as session:
        return session.scalar(select(func.count()).select_from(Operation)) or 0


def test_resize_grows_the_volume_then_the_filesystem_and_records_the_size(pg1: World) -> None:
    (before,) = _instances(pg1)
    with pg1.store.session() as session:
        used_before = session.get_one(Host, before.host_id).used_disk_gb
    op = pg1.drive(_resize(pg1, 3))
    assert op.status == "SUCCEEDED", op.error_message
    assert [s["name"] for s in op.steps] == ["volumes", "filesystems", "finish"]
    out = dbaas.get_db(pg1.store, pg1.member, "pg1")
    assert (out.status, out.size_gb, out.status_message) == ("ACTIVE", 3, "")
    assert out.storage is not None and out.storage.total_bytes == 3 * GIB
    (after,) = _instances(pg1)
    assert CLOUD.volume_gb[(after.id, "data")] == 3
    assert after.volumes[0]["size_gb"] == 3  # a repair recreates it at the new size
    assert after.disk_gb == before.disk_gb + 2
    with pg1.store.session() as session:
        assert session.get_one(Host, after.host_id).used_disk_gb == used_before + 2
    agent = CLOUD.objects[after.id].agent
    assert agent is not None and agent.calls.count("grow storage") == 1
    assert pg1.events(out.id)[-2:] == [("ACTIVE", "RESIZE"), ("RESIZE", "ACTIVE")]


def test_every_member_grows_a_replica_on_a_vm_too(
    pg1: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeAgent, "replayed", 6000)
    accepted = replicas.create_replica(
        pg1.store, pg1.settings, pg1.member, "pg1", ReplicaCreate(flavor="vm.small")
    )
    assert pg1.drive(accepted.operation.id).status == "SUCCEEDED"
    assert pg1.drive(_resize(pg1, 2)).status == "SUCCEEDED"
    rows = _instances(pg1)
    assert sorted(r.compute_type for r in rows) == ["container", "vm"]
    assert all(CLOUD.volume_gb[(r.id, "data")] == 2 for r in rows)
    assert all(r.volumes[0]["size_gb"] == 2 for r in rows)
    # a replica made later gets the grown size
    with pg1.store.session() as session:
        assert session.scalars(select(DbInstance.size_gb)).one() == 2


@pytest.mark.parametrize(
    ("size", "error", "code"),
    [(1, InvalidInput, "same_size"), (3, Conflict, "storage_cannot_shrink")],
)
def test_shrinking_or_the_same_size_is_refused_and_changes_nothing(
    pg1: World, size: int, error: type[Exception], code: str
) -> None:
    if code == "storage_cannot_shrink":
        assert pg1.drive(_resize(pg1, 4)).status == "SUCCEEDED"
    ops = _operations(pg1)
    with pytest.raises(error) as refused:
        _resize(pg1, size)
    assert getattr(refused.value, "code", None) == code
    assert "only grows" in str(refused.value) or "already" in str(refused.value)
    out = dbaas.get_db(pg1.store, pg1.member, "pg1")
    assert out.status == "ACTIVE" and _operations(pg1) == ops


@pytest.fixture
def pgbm(world: World) -> World:
    """pgbm: an ACTIVE PostgreSQL on a node (its deploy played by the fake ramdisk), 1 GB."""
    enrolled = world.enroll("n1")
    fake = CLOUD.nodes["n1"]
    world.play_the_ramdisk(fake)
    world.drive(enrolled)
    world.serve_on_disk_boot(fake)
    world.create_db("pgbm", "baremetal.small")
    world.drive_all()
    assert dbaas.get_db(world.store, world.member, "pgbm").status == "ACTIVE"
    return world


def test_a_nodes_data_partition_is_the_databases_size_and_records_the_disks_end(
    pgbm: World,
) -> None:
    manifest = CLOUD.nodes["n1"].manifest
    assert manifest is not None and "data_mib=1024" in manifest.splitlines()
    (row,) = _instances(pgbm)
    assert row.volumes[0]["size_gb"] == 1
    assert row.volumes[0]["max_size_gb"] == 7  # 7468 MiB of room: whole GB
    assert dbaas.get_db(pgbm.store, pgbm.member, "pgbm").max_size_gb == 7
    described = describe_compute_type(driver_class(ComputeType.BAREMETAL))
    caps = {c.name: c for c in described.capabilities}
    grow = caps[Capability.GROW_STORAGE.value]
    assert grow.supported and grow.reason is None
    assert grow.limit is not None and "end" in grow.limit and "max_size_gb" in grow.limit


def test_a_node_grows_online_up_to_the_end_of_its_disk(pgbm: World) -> None:
    used = {h.id: h.used_disk_gb for h in _hosts(pgbm)}
    op = pgbm.drive(_resize(pgbm, 7, "pgbm"))  # the whole rest of the disk
    assert op.status == "SUCCEEDED", op.error_message
    out = dbaas.get_db(pgbm.store, pgbm.member, "pgbm")
    assert (out.status, out.size_gb, out.max_size_gb) == ("ACTIVE", 7, 7)
    assert out.storage is not None and out.storage.total_bytes == 7 * GIB
    (row,) = _instances(pgbm)
    assert row.volumes[0] == {**row.volumes[0], "size_gb": 7, "max_size_gb": 7}
    agent = CLOUD.nodes["n1"].services[1]  # the node's guest agent grew its partition
    assert agent.calls.count("grow storage") == 1 and agent.size_bytes == 7 * GIB
    # the node's disk is the instance's alone: counted, though the flavor's nominal disk
    # and the volume are more than the inspected disk
    assert sum(h.used_disk_gb for h in _hosts(pgbm)) == sum(used.values()) + 6


def test_a_growth_past_the_nodes_disk_is_refused_up_front(pgbm: World) -> None:
    ops = _operations(pgbm)
    with pytest.raises(Conflict) as refused:
        _resize(pgbm, 8, "pgbm")
    assert refused.value.code == "no_room_on_disk" and "7 GB at most" in refused.value.message
    with pytest.raises(Conflict) as too_high:  # auto-growth's cap too
        storage.set_autogrow(
            pgbm.store, pgbm.settings, pgbm.member, "pgbm", StorageAutogrow(max_gb=9)
        )
    assert too_high.value.code == "no_room_on_disk"
    out = dbaas.get_db(pgbm.store, pgbm.member, "pgbm")
    assert (out.status, out.size_gb) == ("ACTIVE", 1) and _operations(pgbm) == ops


def test_every_compute_type_grows_storage() -> None:
    for compute_type in ComputeType:
        assert driver_class(compute_type).unsupported_reason(Capability.GROW_STORAGE) is None


def test_a_host_without_the_room_refuses(pg1: World) -> None:
    (row,) = _instances(pg1)
    with pg1.store.session() as session:
        host = session.get_one(Host, row.host_id)
        session.execute(update(Host).values(disk_gb=host.used_disk_gb + 1))
    with pytest.raises(Conflict) as refused:
        _resize(pg1, 5)
    assert refused.value.code == "no_room_on_host"
    assert dbaas.get_db(pg1.store, pg1.member, "pg1").status == "ACTIVE"


def test_only_an_active_database_grows(pg1: World) -> None:
    with pg1.store.session() as session:
        db = session.scalars(select(DbInstance)).one()
        DATABASES.move(session, db, DbStatus.RESTARTING, "test")
    with pytest.raises(Conflict) as refused:
        _resize(pg1, 2)
    assert refused.value.code == "invalid_state"


def test_a_failed_growth_leaves_the_database_serving_and_a_retry_completes_it(
    pg1: World,
) -> None:
    CLOUD.fail_next("grow_volume", BackendError("the storage pool is full"))
    op = pg1.drive(_resize(pg1, 2))
    assert op.status == "FAILED"
    out = dbaas.get_db(pg1.store, pg1.member, "pg1")
    assert out.status == "ACTIVE" and out.size_gb == 1
    assert "storage growth to 2 GB failed" in out.status_message
    assert "the storage pool is full" in out.status_message
    assert pg1.drive(_resize(pg1, 2)).status == "SUCCEEDED"
    out = dbaas.get_db(pg1.store, pg1.member, "pg1")
    assert (out.status, out.size_gb) == ("ACTIVE", 2)


def test_the_health_checker_records_the_usage_the_agent_reports(pg1: World) -> None:
    with pg1.store.session() as session:
        session.execute(update(DbInstance).values(storage_checked_at=None))
    assert dbaas.get_db(pg1.store, pg1.member, "pg1").storage is None
    health.check_once(pg1.store, pg1.settings)
    out = dbaas.get_db(pg1.store, pg1.member, "pg1")
    assert out.storage is not None
    assert (out.storage.total_bytes, out.storage.used_bytes) == (GIB, 4096)


# -- auto-growth -------------------------------------------------------------------------------
@pytest.fixture
def vm1(world: World) -> World:
    """vm1: an ACTIVE PostgreSQL on a VM, 2 GB of storage."""
    accepted = dbaas.create_db(
        world.store,
        world.settings,
        world.member,
        DbInstanceCreate(name="vm1", flavor="vm.small", size_gb=2),
    )
    assert world.drive(accepted.operation.id).status == "SUCCEEDED"
    return world


def _grow_ops(world: World) -> list[Operation]:
    with world.store.session() as session:
        query = (
            select(Operation)
            .where(Operation.kind == "db.storage.grow")
            .order_by(Operation.created_at, Operation.id)
        )
        rows = list(session.scalars(query))
        for row in rows:
            session.expunge(row)
        return rows


def _reported(world: World, name: str, used: float) -> None:
    """What the health checker's round does with an agent's report: ``used`` of the
    storage's size (the fake guest's filesystem is the volume's size) full."""
    with world.store.session() as session:
        db = session.scalars(select(DbInstance).where(DbInstance.name == name)).one()
        total = db.size_gb * GIB
        usage = {"total_bytes": total, "used_bytes": int(used * total), "free_bytes": 0}
        storage.record_usage(db, usage)
        storage.autogrow(session, db)


def test_autogrow_grows_by_half_when_over_80_percent_full_up_to_its_cap(vm1: World) -> None:
    out = storage.set_autogrow(
        vm1.store, vm1.settings, vm1.member, "vm1", StorageAutogrow(max_gb=4)
    )
    assert out.autogrow_max_gb == 4
    _reported(vm1, "vm1", 0.7)  # not yet
    assert _grow_ops(vm1) == []
    _reported(vm1, "vm1", 0.9)  # grow by half: 2 -> 3
    (op,) = _grow_ops(vm1)
    assert op.params["size_gb"] == 3 and op.project_id == vm1.member.project_id
    assert dbaas.get_db(vm1.store, vm1.member, "vm1").status == "RESIZE"
    _reported(vm1, "vm1", 0.99)  # under way: not twice
    assert len(_grow_ops(vm1)) == 1
    assert vm1.drive(op.id).status == "SUCCEEDED"
    assert dbaas.get_db(vm1.store, vm1.member, "vm1").size_gb == 3
    _reported(vm1, "vm1", 0.95)  # 3 * 1.5 is above the cap: up to it
    ops = _grow_ops(vm1)
    assert len(ops) == 2 and ops[-1].params["size_gb"] == 4
    assert vm1.drive(ops[-1].id).status == "SUCCEEDED"
    _reported(vm1, "vm1", 0.95)  # at its cap: no more
    assert len(_grow_ops(vm1)) == 2
    assert dbaas.get_db(vm1.store, vm1.member, "vm1").size_gb == 4


def test_the_health_checker_starts_an_autogrowth_from_the_agents_report(
    vm1: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.set_autogrow(vm1.store, vm1.settings, vm1.member, "vm1", StorageAutogrow(max_gb=4))
    monkeypatch.setattr(FakeAgent, "used_bytes", int(0.9 * FakeAgent.size_bytes))
    health.check_once(vm1.store, vm1.settings)
    (op,) = _grow_ops(vm1)
    assert op.params["size_gb"] == 3


def test_autogrow_never_acts_on_a_container_whose_volume_is_not_size_limited(pg1: World) -> None:
    storage.set_autogrow(pg1.store, pg1.settings, pg1.member, "pg1", StorageAutogrow(max_gb=8))
    _reported(pg1, "pg1", 0.99)
    assert _grow_ops(pg1) == []


def test_autogrow_refusals(pg1: World) -> None:
    assert pg1.drive(_resize(pg1, 2)).status == "SUCCEEDED"
    with pytest.raises(InvalidInput, match="above it"):
        storage.set_autogrow(pg1.store, pg1.settings, pg1.member, "pg1", StorageAutogrow(max_gb=2))
    off = storage.set_autogrow(
        pg1.store, pg1.settings, pg1.member, "pg1", StorageAutogrow(max_gb=None)
    )
    assert off.autogrow_max_gb is None


def test_an_autogrowth_the_host_has_no_room_for_is_said_in_the_status_message(
    vm1: World,
) -> None:
    storage.set_autogrow(vm1.store, vm1.settings, vm1.member, "vm1", StorageAutogrow(max_gb=9))
    (row,) = _instances(vm1)
    with vm1.store.session() as session:
        host = session.get_one(Host, row.host_id)
        session.execute(update(Host).values(disk_gb=host.used_disk_gb))
    _reported(vm1, "vm1", 0.9)
    out = dbaas.get_db(vm1.store, vm1.member, "vm1")
    assert out.status == "ACTIVE" and "auto-growth refused" in out.status_message
    assert _grow_ops(vm1) == []


def test_a_reading_older_than_the_one_kept_is_ignored() -> None:
    """A health round that asked the agent before a growth finished answers after it: the
    growth's figures stay (the lab saw the old size win, as the last write)."""
    asked = dt.datetime(2026, 11, 28, 1, 46, 59, tzinfo=dt.UTC)
    db = DbInstance(name="pgbm")
    grown = {"total_bytes": 2 * GIB, "used_bytes": 1, "free_bytes": 2 * GIB - 1}
    storage.record_usage(db, grown, at=asked + dt.timedelta(seconds=1))
    old = {"total_bytes": GIB, "used_bytes": 1, "free_bytes": GIB - 1}
    storage.record_usage(db, old, at=asked)
    assert db.storage_total_bytes == 2 * GIB
    storage.record_usage(db, old, at=asked + dt.timedelta(seconds=2))  # a newer reading wins
    assert db.storage_total_bytes == GIB
