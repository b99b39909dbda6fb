"""Storage growth (``onep db resize``) through its real steps against the fakes: every member's
volume grows, then its filesystem; refusals change nothing; a failure leaves the database
serving. The real thing on containers and VMs: tests/e2e/test_db_cli.py and
tests/e2e/test_vm_cli.py."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update

from oneplatform.compute.capabilities import Capability
from oneplatform.compute.drivers import driver_class
from oneplatform.dbaas import health, replicas, storage
from oneplatform.dbaas import service as dbaas
from oneplatform.dbaas.states import DATABASES, DbStatus
from oneplatform.errors import BackendError, CapabilityNotSupported, Conflict, InvalidInput
from oneplatform.schemas.compute import ComputeType
from oneplatform.schemas.databases import ReplicaCreate, StorageResize
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


def test_bare_metal_is_refused_up_front_with_the_drivers_reason(pg1: World) -> None:
    reason = driver_class(ComputeType.BAREMETAL).unsupported_reason(Capability.GROW_STORAGE)
    assert reason is not None and "spans the rest of its disk" in reason
    assert driver_class(ComputeType.VM).unsupported_reason(Capability.GROW_STORAGE) is None
    assert driver_class(ComputeType.CONTAINER).unsupported_reason(Capability.GROW_STORAGE) is None
    with pg1.store.session() as session:  # as if pg1 ran on a node
        session.execute(update(Instance).values(compute_type="baremetal"))
    ops = _operations(pg1)
    with pytest.raises(CapabilityNotSupported, match="spans the rest of its disk"):
        _resize(pg1, 2)
    assert dbaas.get_db(pg1.store, pg1.member, "pg1").status == "ACTIVE"
    assert _operations(pg1) == ops and CLOUD.count("grow_volume") == 0


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
