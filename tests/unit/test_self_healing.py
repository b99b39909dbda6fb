"""Self-healing and recovery on the fakes: what the reconciler repairs and what it leaves
alone, retries and giving up, and a database brought back by its restart."""

from __future__ import annotations

import pytest

from oneplatform.compute import instances
from oneplatform.compute.reconciler import reconcile_once
from oneplatform.dbaas import service as dbaas
from oneplatform.dbaas.health import check_once
from oneplatform.errors import BackendError, Conflict
from oneplatform.store.models import DbInstance
from tests.fakes import CLOUD
from tests.world import World


def _running(world: World, name: str = "web", flavor: str = "container.small") -> str:
    iid, op_id = world.create(name, flavor)
    assert world.drive(op_id).status == "SUCCEEDED"
    return iid


def _heal(world: World) -> list[str]:
    started = reconcile_once(world.store, world.settings)
    for op_id in started:
        world.drive(op_id)
    return started


def test_a_killed_backend_is_started_again(world: World) -> None:
    iid = _running(world)
    CLOUD.kill(iid)
    (op_id,) = reconcile_once(world.store, world.settings)
    assert world.instance(iid).status == "REPAIR"
    assert world.drive(op_id).status == "SUCCEEDED"
    row = world.instance(iid)
    assert (row.status, row.power_state) == ("ACTIVE", "running")
    assert CLOUD.count("start") == 1 and CLOUD.objects[iid].listeners
    assert ("ACTIVE", "REPAIR") in world.events(iid) and ("REPAIR", "ACTIVE") in world.events(iid)


def test_a_vanished_backend_is_recreated_on_its_own_volume(world: World) -> None:
    db_id = world.create_db()
    world.drive_all()
    (iid,) = list(CLOUD.objects)
    CLOUD.vanish(iid)
    assert len(_heal(world)) == 1
    assert world.instance(iid).status == "ACTIVE"
    assert CLOUD.count("create") == 2 and iid in CLOUD.objects
    assert (iid, "data") in CLOUD.volumes
    check_once(world.store, world.settings)
    out = dbaas.get_db(world.store, world.member, db_id)
    assert (out.status, out.health) == ("ACTIVE", "HEALTHY")


def test_a_vanished_backend_without_its_volume_is_not_recreated_empty(world: World) -> None:
    world.create_db()
    world.drive_all()
    (iid,) = list(CLOUD.objects)
    CLOUD.vanish(iid)
    CLOUD.volumes.clear()
    _heal(world)
    row = world.instance(iid)
    assert row.status == "ERROR" and "data volume(s) data" in row.status_message
    assert CLOUD.count("create") == 1  # never recreated on empty storage


def test_a_repair_retries_with_backoff_then_gives_up_with_the_reason(world: World) -> None:
    world.settings.repair_attempts = 3
    iid = _running(world)
    CLOUD.kill(iid)
    for _ in range(3):
        CLOUD.fail_next("start", BackendError("runc: cannot start"))
    (op_id,) = reconcile_once(world.store, world.settings)
    op = world.drive(op_id)
    assert (op.status, op.error_code) == ("FAILED", "repair_failed")
    row = world.instance(iid)
    assert row.status == "ERROR"
    assert row.status_message == "repair: gave up after 3 attempts: runc: cannot start"
    assert CLOUD.count("start") == 3


def test_a_repair_that_succeeds_on_a_later_attempt(world: World) -> None:
    iid = _running(world)
    CLOUD.kill(iid)
    CLOUD.fail_next("start", BackendError("busy"))
    (op_id,) = reconcile_once(world.store, world.settings)
    assert world.drive(op_id).status == "SUCCEEDED"
    assert CLOUD.count("start") == 2 and world.instance(iid).status == "ACTIVE"


def test_what_a_user_stopped_and_what_an_operation_drives_are_left_alone(world: World) -> None:
    stopped = _running(world, "stopped")
    world.drive(instances.act(world.store, world.member, "stopped", "stop").operation.id)
    busy = _running(world, "busy")
    CLOUD.kill(busy)
    instances.act(world.store, world.member, "busy", "reboot")  # not driven yet
    healthy = _running(world, "healthy")
    assert reconcile_once(world.store, world.settings) == []
    assert world.instance(stopped).status == "SHUTOFF"
    assert world.instance(busy).status == "REBOOT"
    assert world.instance(healthy).status == "ACTIVE"


def test_a_node_powered_off_behind_the_platforms_back_is_powered_on(world: World) -> None:
    enrolled = world.enroll("n1")
    fake = CLOUD.nodes["n1"]
    world.play_the_ramdisk(fake)
    world.serve_on_disk_boot(fake)
    world.drive(enrolled)
    iid, op_id = world.create("bm1", "baremetal.small")
    assert world.drive(op_id).status == "SUCCEEDED"
    fake.shut_down()
    fake.power = fake.power.STOPPED
    assert len(_heal(world)) == 1
    assert world.instance(iid).status == "ACTIVE"
    assert fake.boots[-1] == "hdd" and fake.services


def test_an_unreachable_agent_makes_the_health_checker_repair_at_once(world: World) -> None:
    db_id = world.create_db()
    world.drive_all()
    (iid,) = list(CLOUD.objects)
    CLOUD.kill(iid)
    check_once(world.store, world.settings)  # the agent does not answer: repair started
    assert world.instance(iid).status == "REPAIR"
    world.drive_all()
    check_once(world.store, world.settings)
    out = dbaas.get_db(world.store, world.member, db_id)
    assert (out.status, out.health) == ("ACTIVE", "HEALTHY")


def test_restart_repairs_a_dead_compute_and_recovers_from_error(world: World) -> None:
    world.settings.repair_attempts = 1
    db_id = world.create_db()
    world.drive_all()
    (iid,) = list(CLOUD.objects)
    CLOUD.kill(iid)
    CLOUD.fail_next("start", BackendError("no memory"))
    _heal(world)  # the repair gives up: the compute is ERROR ...
    check_once(world.store, world.settings)  # ... and so is the database, with the reason
    out = dbaas.get_db(world.store, world.member, db_id)
    assert out.status == "ERROR" and "no memory" in out.status_message
    restart = dbaas.restart_db(world.store, world.settings, world.member, db_id)
    assert world.drive(restart.operation.id).status == "SUCCEEDED"
    out = dbaas.get_db(world.store, world.member, db_id)
    assert (out.status, out.health) == ("ACTIVE", "HEALTHY")
    assert world.instance(iid).status == "ACTIVE"
    agent = CLOUD.objects[iid].agent
    assert agent is not None and agent.restarts == 0  # a fresh start, not a restart on top


def test_restart_of_a_running_database_restarts_the_engine_only(world: World) -> None:
    world.create_db()
    world.drive_all()
    restart = dbaas.restart_db(world.store, world.settings, world.member, "pg1")
    assert world.drive(restart.operation.id).status == "SUCCEEDED"
    (obj,) = CLOUD.objects.values()
    assert obj.agent is not None and obj.agent.restarts == 1
    assert CLOUD.count("start") == 0


def test_restart_refuses_when_the_data_volume_is_gone(world: World) -> None:
    db_id = world.create_db()
    world.drive_all()
    with world.store.session() as session:
        session.get_one(DbInstance, db_id).status = "ERROR"
    CLOUD.volumes.clear()
    with pytest.raises(Conflict) as err:
        dbaas.restart_db(world.store, world.settings, world.member, db_id)
    assert err.value.code == "data_volume_gone"
    assert dbaas.get_db(world.store, world.member, db_id).status == "ERROR"
