"""Quotas per project: set by an admin, shown with usage, enforced where resources are taken
(creates, replicas, moves, restores' creates, resizes, backups), and held under concurrency."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from oneplatform import quotas
from oneplatform.compute import instances as service
from oneplatform.dbaas import backups, replicas, storage
from oneplatform.dbaas import service as dbaas
from oneplatform.errors import Forbidden, NotFound, QuotaExceeded
from oneplatform.iam import Caller
from oneplatform.schemas.backups import BackupCreate
from oneplatform.schemas.databases import (
    DbInstanceCreate,
    MoveRequest,
    ReplicaCreate,
    StorageResize,
)
from oneplatform.schemas.instances import InstanceCreate
from oneplatform.schemas.quotas import QuotaSet
from oneplatform.store.db import Store
from oneplatform.store.models import (
    Backup,
    DbInstance,
    DbMember,
    Event,
    Instance,
    Operation,
    ProjectQuota,
)
from tests.factories import caller_for, make_flavor, make_host, make_project, make_ready_image
from tests.world import World


def _limit(world: World, **limits: int | None) -> None:
    quotas.set_quota(world.store, world.admin, world.member.project_name, QuotaSet(**limits))


def _counts(store: Store) -> tuple[int, ...]:
    with store.session() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(m)) or 0
            for m in (Instance, DbInstance, DbMember, Operation, Event, Backup)
        )


def _refused(err: pytest.ExceptionInfo[QuotaExceeded], resource: str) -> None:
    assert err.value.status == 403 and err.value.code == "quota_exceeded"
    assert err.value.details["resource"] == resource
    assert resource in err.value.message


# -- shown and set ------------------------------------------------------------------------------
def test_a_project_sees_its_limits_beside_its_usage(world: World) -> None:
    fresh = quotas.get_quota(world.store, world.member)
    assert {k: (v.limit, v.used) for k, v in fresh.quota.items()} == {
        "databases": (None, 0),
        "vcpus": (None, 0),
        "ram_mb": (None, 0),
        "storage_gb": (None, 0),
        "backups": (None, 0),
    }
    _limit(world, databases=3, vcpus=8)
    world.create_db(flavor="container.large")  # 4 vCPUs, 4096 MiB, a 4 GB disk
    shown = quotas.get_quota(world.store, world.member).quota
    assert (shown["databases"].limit, shown["databases"].used) == (3, 1)
    assert (shown["vcpus"].limit, shown["vcpus"].used) == (8, 4)
    assert (shown["ram_mb"].limit, shown["ram_mb"].used) == (None, 4096)
    assert shown["storage_gb"].used == 4 + 1  # the flavor's disk and the 1 GB data volume


def test_only_an_admin_sets_a_quota_and_a_member_sees_only_its_own(world: World) -> None:
    with pytest.raises(Forbidden) as err:
        quotas.set_quota(
            world.store, world.member, world.member.project_name, QuotaSet(databases=1)
        )
    assert err.value.code == "admin_required"
    with world.store.session() as session:
        other = caller_for(make_project(session))
    with pytest.raises(Forbidden):
        quotas.get_quota(world.store, world.member, other.project_name)
    with pytest.raises(NotFound):
        quotas.get_quota(world.store, world.admin, "no-such-project")
    assert quotas.get_quota(world.store, world.admin, other.project_name).quota["vcpus"].used == 0


def test_a_limit_left_out_is_kept_and_null_lifts_it(world: World) -> None:
    _limit(world, databases=2, vcpus=4)
    _limit(world, vcpus=None)
    shown = quotas.get_quota(world.store, world.member).quota
    assert (shown["databases"].limit, shown["vcpus"].limit) == (2, None)


def test_a_limit_under_the_usage_takes_nothing_away_but_stops_more(world: World) -> None:
    world.create_db("pg1")
    world.create_db("pg2")
    _limit(world, databases=1)
    assert quotas.get_quota(world.store, world.member).quota["databases"].used == 2
    before = _counts(world.store)
    with pytest.raises(QuotaExceeded) as err:
        world.create_db("pg3")
    _refused(err, "databases")
    assert err.value.details == {"resource": "databases", "limit": 1, "used": 2, "requested": 1}
    assert _counts(world.store) == before


# -- enforced -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("limits", "create", "resource"),
    [
        ({"databases": 0}, {}, "databases"),
        ({"vcpus": 3}, {"flavor": "container.large"}, "vcpus"),
        ({"ram_mb": 1000}, {"flavor": "vm.small"}, "ram_mb"),
        ({"storage_gb": 10}, {"size_gb": 7}, "storage_gb"),  # 4 GB disk + 7 GB volume
        ({"vcpus": 1}, {"replicas": 1}, "vcpus"),  # the primary fits, its replica does not
    ],
)
def test_a_database_create_over_a_quota_is_refused_and_leaves_nothing(
    world: World, limits: dict[str, int], create: dict[str, Any], resource: str
) -> None:
    _limit(world, **limits)
    before = _counts(world.store)
    req = DbInstanceCreate(name="pg1", **{"flavor": "container.small", **create})
    with pytest.raises(QuotaExceeded) as err:
        dbaas.create_db(world.store, world.settings, world.member, req)
    _refused(err, resource)
    assert _counts(world.store) == before


def test_a_compute_instance_and_its_resize_count_against_the_same_quota(world: World) -> None:
    _limit(world, vcpus=2)
    world.create("i1", "vm.small")  # 1 vCPU
    world.drive_all()
    before = _counts(world.store)
    with pytest.raises(QuotaExceeded) as err:
        world.create("i2", "container.large")  # 4 more
    _refused(err, "vcpus")
    assert _counts(world.store) == before
    service.resize(world.store, world.member, "i1", "vm.medium")  # 1 -> 2: at the limit
    world.drive_all()
    with pytest.raises(QuotaExceeded) as err:
        world.create("i2", "container.small")
    _refused(err, "vcpus")
    service.resize(world.store, world.member, "i1", "vm.small")  # smaller: always allowed


@pytest.fixture
def active_db(world: World) -> World:
    world.create_db()
    world.drive_all()
    return world


def test_a_replica_over_the_quota_is_refused(active_db: World) -> None:
    world = active_db
    _limit(world, ram_mb=512 + 512)
    before = _counts(world.store)
    with pytest.raises(QuotaExceeded) as err:
        replicas.create_replica(
            world.store, world.settings, world.member, "pg1", ReplicaCreate(flavor="vm.small")
        )
    _refused(err, "ram_mb")  # a 1024 MiB replica beside the 512 MiB primary
    assert _counts(world.store)[:3] == before[:3]
    replicas.create_replica(
        world.store, world.settings, world.member, "pg1", ReplicaCreate(flavor="container.small")
    )


def test_a_move_counts_only_what_it_adds(active_db: World) -> None:
    """A move holds both members until its switchover; the quota is charged the difference:
    at a full quota a move to a same-sized flavor goes, to a bigger one is refused."""
    world = active_db
    used = quotas.get_quota(world.store, world.member).quota
    _limit(world, vcpus=used["vcpus"].used, ram_mb=used["ram_mb"].used)
    with pytest.raises(QuotaExceeded) as err:
        replicas.move(
            world.store, world.settings, world.member, "pg1", MoveRequest(flavor="vm.small")
        )
    _refused(err, "ram_mb")  # 512 -> 1024 MiB
    _limit(world, ram_mb=1024)
    op = replicas.move(
        world.store, world.settings, world.member, "pg1", MoveRequest(flavor="vm.small")
    )
    assert op.kind == "db.move"


def test_storage_growth_over_the_quota_is_refused(active_db: World) -> None:
    world = active_db
    used = quotas.get_quota(world.store, world.member).quota["storage_gb"].used
    _limit(world, storage_gb=used + 1)
    before = _counts(world.store)
    with pytest.raises(QuotaExceeded) as err:
        storage.resize_storage(
            world.store, world.settings, world.member, "pg1", StorageResize(size_gb=3)
        )
    _refused(err, "storage_gb")  # 1 -> 3 GB takes 2 more
    assert _counts(world.store) == before
    storage.resize_storage(
        world.store, world.settings, world.member, "pg1", StorageResize(size_gb=2)
    )


def test_backups_over_the_quota_are_refused(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_operation_kinds import _with_backups

    _with_backups(world, monkeypatch)
    world.create_db()
    world.drive_all()
    _limit(world, backups=1)
    first = backups.create_backup(
        world.store, world.settings, world.member, "pg1", BackupCreate(type="full", name="b1")
    )
    assert world.drive(first.operation.id).status == "SUCCEEDED"
    before = _counts(world.store)
    with pytest.raises(QuotaExceeded) as err:
        backups.create_backup(
            world.store, world.settings, world.member, "pg1", BackupCreate(type="full")
        )
    _refused(err, "backups")
    assert _counts(world.store) == before


def test_a_quota_holds_whatever_the_callers_role(world: World) -> None:
    """The checks look at the project, not the caller: an admin-role caller of the project
    is held too."""
    _limit(world, databases=0)
    project_admin = Caller(world.member.project_id, world.member.project_name, "admin", "p-admin")
    with pytest.raises(QuotaExceeded):
        dbaas.create_db(
            world.store,
            world.settings,
            project_admin,
            DbInstanceCreate(name="pg1", flavor="container.small"),
        )


# -- concurrency ----------------------------------------------------------------------------------
N = 4  # instances the quota has room for


def test_concurrent_creates_never_exceed_a_quota(store: Store) -> None:
    """3N creates at once against a quota with room for N (the host has room for all):
    exactly N are accepted, the rest refused with quota_exceeded, and at no moment does the
    project hold more than its quota."""
    with store.session() as session:
        project = make_project(session)
        make_host(session, vcpus=64, ram_mb=65536, disk_gb=2000)
        flavor = make_flavor(session, vcpus=2, ram_mb=512, disk_gb=10)
        image = make_ready_image(session)
        session.add(ProjectQuota(project_id=project.id, vcpus=2 * N))
    caller = caller_for(project)
    attempts = 3 * N
    barrier = threading.Barrier(attempts)
    done = threading.Event()
    peaks: list[int] = []

    def watch() -> None:
        while not done.is_set():
            with store.session() as session:
                peaks.append(quotas.usage(session, project.id)["vcpus"])
            done.wait(0.005)

    def create(i: int) -> Any:
        barrier.wait()
        try:
            return service.create_instance(
                store, caller, InstanceCreate(name=f"i-{i}", flavor=flavor.name, image=image.name)
            )
        except QuotaExceeded as err:
            return err

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(attempts) as pool:
            results = list(pool.map(create, range(attempts)))
    finally:
        done.set()
        watcher.join()

    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    accepted = [r for r in results if not isinstance(r, QuotaExceeded)]
    assert len(accepted) == N, results
    assert {(e.status, e.code, e.details["resource"]) for e in refused} == {
        (403, "quota_exceeded", "vcpus")
    }
    assert max(peaks) <= 2 * N
    with store.session() as session:
        assert quotas.usage(session, project.id)["vcpus"] == 2 * N
        live = session.scalars(select(Instance).where(Instance.project_id == project.id)).all()
        assert sorted(i.name for i in live) == sorted(a.instance.name for a in accepted)
        # a refusal left no operation behind
        assert session.scalar(select(func.count()).select_from(Operation)) == N
