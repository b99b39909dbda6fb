"""Warm capacity on fakes: the keeper keeps pools at target, a matching create claims a
ready instance (and only one create gets each), the owner's bundle replaces the warm one,
and a drained pool's instances are deleted."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from oneplatform.dbaas import service as dbaas
from oneplatform.dbaas import warm
from oneplatform.errors import BackendError, Forbidden
from oneplatform.iam import list_projects
from oneplatform.ops.service import list_operations
from oneplatform.schemas.databases import DbInstanceCreate
from oneplatform.schemas.warm import WarmSet
from oneplatform.secrets import box_for
from oneplatform.store.models import DbInstance, Instance, Project, WarmInstance
from tests.fakes import CLOUD
from tests.world import World


def _keep(world: World, rounds: int = 3) -> None:
    """Keeper rounds, with the instances' operations driven in between."""
    for _ in range(rounds):
        warm.keep_once(world.store, world.settings)
        world.drive_all()
    warm.keep_once(world.store, world.settings)


def _pool(world: World) -> dict[str, object]:
    (pool,) = warm.list_warm(world.store, world.admin)
    return pool.model_dump()


def _warm_rows(world: World) -> list[WarmInstance]:
    with world.store.session() as session:
        rows = list(session.scalars(select(WarmInstance).order_by(WarmInstance.created_at)))
        for row in rows:
            session.expunge(row)
        return rows


def _bundle_of(world: World, instance_id: str) -> dict[str, object]:
    with world.store.session() as session:
        enc = session.get_one(Instance, instance_id).bundle_enc
    assert enc is not None
    return dict(json.loads(box_for(world.settings).decrypt(enc)))


def test_warm_capacity_is_for_admins(world: World) -> None:
    with pytest.raises(Forbidden):
        warm.set_warm(world.store, world.member, WarmSet(flavor="container.small", count=1))
    with pytest.raises(Forbidden):
        warm.list_warm(world.store, world.member)


def test_the_keeper_makes_warm_instances_of_nobody_on_networks_of_their_own(
    world: World,
) -> None:
    out = warm.set_warm(world.store, world.admin, WarmSet(flavor="container.small", count=2))
    assert (out.target, out.ready, out.building, out.version) == (2, 0, 0, "15")
    _keep(world)
    pool = _pool(world)
    assert (pool["ready"], pool["building"], pool["message"]) == (2, 0, "")
    rows = _warm_rows(world)
    with world.store.session() as session:
        for row in rows:
            instance = session.get_one(Instance, row.instance_id)
            project = session.get_one(Project, instance.project_id)
            assert project.name == warm.WARM_PROJECT and instance.managed_by == "warm"
            assert instance.network_group == instance.id
            assert instance.status == "ACTIVE"
    bundles = [_bundle_of(world, r.instance_id) for r in rows]
    assert all(b["warm"] is True and "platform" not in b for b in bundles)
    assert bundles[0]["agent"] != bundles[1]["agent"]  # no secret shared between them
    # the container's network is its own group, not the warm project's
    assert {o.spec.network for o in CLOUD.objects.values()} == {r.instance_id for r in rows}
    # the internal project is no tenant's; its work is the operator's to follow
    assert warm.WARM_PROJECT not in [p.name for p in list_projects(world.store, world.admin)]
    warm_ids = {r.instance_id for r in rows}
    assert warm_ids <= {op.resource_id for op in list_operations(world.store, world.admin)}
    assert not warm_ids & {op.resource_id for op in list_operations(world.store, world.member)}


def test_a_matching_create_claims_a_ready_one_with_fresh_secrets(world: World) -> None:
    warm.set_warm(world.store, world.admin, WarmSet(flavor="container.small", count=1))
    _keep(world)
    (ready,) = _warm_rows(world)
    warm_bundle = _bundle_of(world, ready.instance_id)
    db_id = world.create_db()
    with world.store.session() as session:
        db = session.get_one(DbInstance, db_id)
        assert db.instance_id == ready.instance_id  # claimed, not placed
        instance = session.get_one(Instance, ready.instance_id)
        assert (instance.project_id, instance.managed_by) == (world.member.project_id, "dbaas")
        assert instance.network_group == instance.id  # still alone on its network
    world.drive_all()
    out = dbaas.get_db(world.store, world.member, "pg1")
    assert (out.status, out.health) == ("ACTIVE", "HEALTHY")
    assert world.pg.users["alice"][1] == {"app"}  # its initial users and databases
    owner = _bundle_of(world, ready.instance_id)
    assert owner["instance_id"] == db_id and "warm" not in owner
    assert owner["agent"] != warm_bundle["agent"]  # type: ignore[index]
    assert owner["admin"] != warm_bundle["admin"]
    (obj,) = [o for o in CLOUD.objects.values() if o.instance_id == ready.instance_id]
    assert obj.agent is not None and obj.agent.bundle == owner  # the agent took it
    claimed = {r.id: r for r in _warm_rows(world)}[ready.id]
    assert (claimed.status, claimed.claimed_by) == ("CLAIMED", db_id)
    assert ("ACTIVE", "ACTIVE") in world.events(ready.instance_id)  # the claim, recorded
    # the keeper replaces what was claimed
    _keep(world)
    assert (_pool(world)["ready"], _pool(world)["claimed"]) == (1, 1)


def test_each_ready_one_goes_to_one_create_and_the_rest_build_cold(world: World) -> None:
    warm.set_warm(world.store, world.admin, WarmSet(flavor="container.small", count=1))
    _keep(world)
    (ready,) = _warm_rows(world)
    first, second = world.create_db("pg1"), world.create_db("pg2")
    with world.store.session() as session:
        a, b = session.get_one(DbInstance, first), session.get_one(DbInstance, second)
        assert a.instance_id == ready.instance_id and b.instance_id != ready.instance_id
    # another size, or another flavor, never takes one
    _keep(world)
    other = dbaas.create_db(
        world.store,
        world.settings,
        world.member,
        DbInstanceCreate(name="big", flavor="container.small", size_gb=5),
    )
    warm_instances = {r.instance_id for r in _warm_rows(world)}
    with world.store.session() as session:
        assert session.get_one(DbInstance, other.instance.id).instance_id not in warm_instances
    world.drive_all()
    for name in ("pg1", "pg2", "big"):
        assert dbaas.get_db(world.store, world.member, name).status == "ACTIVE"


def test_count_zero_drains_the_pool(world: World) -> None:
    warm.set_warm(world.store, world.admin, WarmSet(flavor="container.small", count=2))
    _keep(world)
    assert len(CLOUD.objects) == 2
    warm.set_warm(world.store, world.admin, WarmSet(flavor="container.small", count=0))
    _keep(world)
    pool = _pool(world)
    assert (pool["target"], pool["ready"], pool["building"]) == (0, 0, 0)
    assert CLOUD.objects == {}
    assert {r.status for r in _warm_rows(world)} == {"DELETED"}
    # with nothing warm a create is an ordinary one
    world.create_db()
    world.drive_all()
    assert dbaas.get_db(world.store, world.member, "pg1").status == "ACTIVE"


def test_no_capacity_is_reported_and_tried_again_later(world: World) -> None:
    warm.set_warm(world.store, world.admin, WarmSet(flavor="baremetal.small", count=1))
    warm.keep_once(world.store, world.settings)  # no node is enrolled
    pool = _pool(world)
    assert pool["building"] == 0 and "baremetal" in str(pool["message"]).lower()
    assert _warm_rows(world) == []


def test_a_warm_instance_that_fails_is_deleted_and_replaced(world: World) -> None:
    CLOUD.fail_next("create", BackendError("the host is full"))
    warm.set_warm(world.store, world.admin, WarmSet(flavor="container.small", count=1))
    _keep(world, rounds=4)
    statuses = [r.status for r in _warm_rows(world)]
    assert statuses == ["DELETED", "READY"], statuses
    assert "failed" in _warm_rows(world)[0].status_message


def test_the_next_one_is_made_once_the_claim_is_done(world: World) -> None:
    warm.set_warm(world.store, world.admin, WarmSet(flavor="container.small", count=1))
    _keep(world)
    world.create_db()  # claims it; its create has not run yet
    warm.keep_once(world.store, world.settings)
    assert [r.status for r in _warm_rows(world)] == ["CLAIMED"]  # nothing boots beside it
    world.drive_all()
    warm.keep_once(world.store, world.settings)
    assert [r.status for r in _warm_rows(world)] == ["CLAIMED", "BUILDING"]


def test_a_lower_target_deletes_those_still_building_first(world: World) -> None:
    warm.set_warm(world.store, world.admin, WarmSet(flavor="container.small", count=1))
    _keep(world)
    warm.set_warm(world.store, world.admin, WarmSet(flavor="container.small", count=2))
    warm.keep_once(world.store, world.settings)  # a second one, not built yet
    assert sorted(r.status for r in _warm_rows(world)) == ["BUILDING", "READY"]
    warm.set_warm(world.store, world.admin, WarmSet(flavor="container.small", count=1))
    warm.keep_once(world.store, world.settings)
    assert [r.status for r in _warm_rows(world)] == ["READY", "DELETING"]
