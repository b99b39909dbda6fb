"""The state-machine type, and what every resource's table must promise.

The generic tests use a small table of their own; the per-resource tests check properties
a table can break (reachability, a way out of every state, failures that lead somewhere
allowed) and edges the domain forbids, never a copy of the table itself.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from typing import Any

import pytest
from sqlalchemy import select

from oneplatform.assembly import STATE_MACHINES
from oneplatform.baremetal.states import ACTIONS, NODES, NodeState, move_node
from oneplatform.compute.states import INSTANCES, InstanceStatus
from oneplatform.dbaas.states import DATABASES, DbStatus
from oneplatform.errors import Conflict
from oneplatform.statemachine import StateMachine
from oneplatform.store.db import Store
from oneplatform.store.models import Event, Host, Instance, Node, Pool
from tests.factories import make_flavor, make_instance, make_project, make_ready_image

MACHINES = {m.resource_type: m for m in STATE_MACHINES}


def _reachable(machine: StateMachine[Any], start: Any) -> set[Any]:
    seen, todo = {start}, deque([start])
    while todo:
        for nxt in machine.transitions[todo.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


# -- properties every table keeps --------------------------------------------------------------
@pytest.mark.parametrize("machine", STATE_MACHINES, ids=lambda m: m.resource_type)
def test_every_state_is_reachable_from_the_initial_one(machine: StateMachine[Any]) -> None:
    assert _reachable(machine, machine.initial) == set(machine.states)


@pytest.mark.parametrize("machine", STATE_MACHINES, ids=lambda m: m.resource_type)
def test_no_state_is_a_dead_end_but_deleted(machine: StateMachine[Any]) -> None:
    dead_ends = {s for s in machine.states if not machine.transitions[s]}
    assert dead_ends == ({machine.deleted} if machine.deleted else set())


@pytest.mark.parametrize("machine", STATE_MACHINES, ids=lambda m: m.resource_type)
def test_a_failure_in_any_busy_state_leads_somewhere_allowed(machine: StateMachine[Any]) -> None:
    for state in machine.states:
        if not machine.is_stable(state):
            target = machine.failure_of(state)
            assert machine.allows(state, target), (state, target)
            assert machine.is_stable(target), (state, target)


@pytest.mark.parametrize("machine", STATE_MACHINES, ids=lambda m: m.resource_type)
def test_a_state_never_lists_itself(machine: StateMachine[Any]) -> None:
    for state, targets in machine.transitions.items():
        assert state not in targets


@pytest.mark.parametrize(
    "machine", [m for m in STATE_MACHINES if m.deleted], ids=lambda m: m.resource_type
)
def test_everything_can_be_deleted_and_only_through_deleting(machine: StateMachine[Any]) -> None:
    assert machine.deleting is not None and machine.deleted is not None
    for state in machine.states:
        if state is not machine.deleted:
            assert machine.deleted in _reachable(machine, state), state
    assert [s for s in machine.states if machine.allows(s, machine.deleted)] == [machine.deleting]


def test_the_machines_cover_every_resource_with_a_status() -> None:
    assert set(MACHINES) == {
        "instance",
        "db_instance",
        "db_member",
        "backup",
        "node",
        "cluster",
        "cluster_node",
        "image",
    }


# -- edges the domain forbids ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("machine", "src", "dst"),
    [
        (INSTANCES, InstanceStatus.BUILD, InstanceStatus.SHUTOFF),
        (INSTANCES, InstanceStatus.DELETING, InstanceStatus.ACTIVE),
        (INSTANCES, InstanceStatus.STOPPING, InstanceStatus.STARTING),
        (INSTANCES, InstanceStatus.ACTIVE, InstanceStatus.BUILD),
        (DATABASES, DbStatus.DELETING, DbStatus.ACTIVE),
        (DATABASES, DbStatus.ACTIVE, DbStatus.BUILD),
        (NODES, NodeState.ENROLL, NodeState.AVAILABLE),
        (NODES, NodeState.ACTIVE, NodeState.AVAILABLE),  # only through cleaning
        (NODES, NodeState.AVAILABLE, NodeState.ACTIVE),  # only through deploying
        (NODES, NodeState.DEPLOYING, NodeState.AVAILABLE),
    ],
)
def test_forbidden_edges(machine: StateMachine[Any], src: Any, dst: Any) -> None:
    assert not machine.allows(src, dst)


def test_node_lifecycle_and_actions_follow_the_table() -> None:
    N = NodeState
    path = [N.ENROLL, N.VERIFYING, N.MANAGEABLE, N.INSPECTING, N.MANAGEABLE, N.CLEANING]
    path += [N.AVAILABLE, N.DEPLOYING, N.ACTIVE, N.DELETING, N.CLEANING, N.AVAILABLE]
    for a, b in itertools.pairwise(path):
        assert NODES.allows(a, b), (a, b)
    for action, (sources, first) in ACTIONS.items():
        for src in sources:
            assert NODES.allows(src, first), (action, src)


# -- the choke point, on a table of its own ----------------------------------------------------
class Light(enum.StrEnum):
    OFF = "OFF"
    ON = "ON"
    BROKEN = "BROKEN"
    GONE = "GONE"
    REMOVING = "REMOVING"


def test_a_table_must_name_every_state() -> None:
    with pytest.raises(ValueError, match="no transitions"):
        StateMachine(
            resource_type="light",
            states=Light,
            initial=Light.OFF,
            transitions={Light.OFF: frozenset({Light.ON})},
            stable=frozenset({Light.OFF}),
            failed=Light.BROKEN,
        )


def _instance(store: Store, status: InstanceStatus) -> str:
    with store.session() as session:
        instance = make_instance(
            session,
            make_project(session),
            make_flavor(session),
            make_ready_image(session),
            None,
            status=status,
        )
        instance.status_message = "as made"
        return instance.id


def _events(store: Store, resource_id: str) -> list[tuple[str | None, str, str]]:
    with store.session() as session:
        rows = session.scalars(
            select(Event).where(Event.resource_id == resource_id).order_by(Event.id)
        )
        return [(e.from_status, e.to_status, e.message) for e in rows]


def test_created_records_the_first_event(store: Store) -> None:
    with store.session() as session:
        project = make_project(session)
        flavor, image = make_flavor(session), make_ready_image(session)
        row = Instance(
            id="i" * 32,
            project_id=project.id,
            name="fresh",
            flavor_id=flavor.id,
            image_id=image.id,
            compute_type="container",
            vcpus=1,
            ram_mb=1,
            disk_gb=1,
        )
        INSTANCES.created(session, row, "placed")
        session.add(row)
    assert _events(store, "i" * 32) == [(None, "BUILD", "placed")]


def test_move_records_an_event_per_change(store: Store) -> None:
    iid = _instance(store, InstanceStatus.BUILD)
    path = [InstanceStatus.ACTIVE, InstanceStatus.STOPPING, InstanceStatus.SHUTOFF]
    for new in path:
        with store.session() as session:
            assert INSTANCES.move(session, session.get_one(Instance, iid), new, f"to {new}")
    assert _events(store, iid) == [
        ("BUILD", "ACTIVE", "to ACTIVE"),
        ("ACTIVE", "STOPPING", "to STOPPING"),
        ("STOPPING", "SHUTOFF", "to SHUTOFF"),
    ]


def test_moving_to_the_same_state_only_updates_the_message(store: Store) -> None:
    iid = _instance(store, InstanceStatus.ACTIVE)
    with store.session() as session:
        assert not INSTANCES.move(
            session, session.get_one(Instance, iid), InstanceStatus.ACTIVE, "ok"
        )
    with store.session() as session:
        assert session.get_one(Instance, iid).status_message == "ok"
    assert _events(store, iid) == []


def test_a_refused_move_changes_nothing(store: Store) -> None:
    iid = _instance(store, InstanceStatus.DELETING)
    with pytest.raises(Conflict) as err, store.session() as session:
        INSTANCES.move(session, session.get_one(Instance, iid), InstanceStatus.ACTIVE, "nope")
    assert err.value.code == "invalid_state_transition"
    with store.session() as session:
        row = session.get_one(Instance, iid)
        assert (row.status, row.status_message) == ("DELETING", "as made")
    assert _events(store, iid) == []


def test_reaching_deleted_stamps_deleted_at(store: Store) -> None:
    iid = _instance(store, InstanceStatus.DELETING)
    with store.session() as session:
        INSTANCES.move(session, session.get_one(Instance, iid), InstanceStatus.DELETED)
    with store.session() as session:
        assert session.get_one(Instance, iid).deleted_at is not None


def test_fail_goes_where_the_table_says(store: Store) -> None:
    iid = _instance(store, InstanceStatus.STARTING)
    with store.session() as session:
        INSTANCES.fail(session, session.get_one(Instance, iid), "start: it broke")
    with store.session() as session:
        row = session.get_one(Instance, iid)
        assert (row.status, row.status_message) == ("ERROR", "start: it broke")


# -- nodes keep their last error and their host's availability ---------------------------------
def _node(store: Store, state: NodeState) -> tuple[str, str]:
    with store.session() as s:
        pool = Pool(name="bm", compute_type="baremetal", settings={})
        s.add(pool)
        s.flush()
        host = Host(
            name="n1", pool_id=pool.id, uri="node://x", vcpus=1, ram_mb=1, disk_gb=1, traits=[]
        )
        s.add(host)
        s.flush()
        node = Node(
            name="n1",
            pool_id=pool.id,
            host_id=host.id,
            state=state.value,
            target_state="available",
            bmc_address="http://127.0.0.1:1",
            bmc_system_id="x",
        )
        s.add(node)
        s.flush()
        return node.id, host.id


def test_a_node_failure_keeps_its_message_and_ends_its_target(store: Store) -> None:
    node_id, host_id = _node(store, NodeState.CLEANING)
    with store.session() as s:
        move_node(s, s.get_one(Node, node_id), NodeState.CLEAN_FAILED, "disk gone")
    with store.session() as s:
        node = s.get_one(Node, node_id)
        assert (node.last_error, node.target_state) == ("disk gone", None)
        assert s.get_one(Host, host_id).enabled is False


def test_a_node_takes_instances_exactly_while_available(store: Store) -> None:
    node_id, host_id = _node(store, NodeState.CLEANING)
    for state, enabled in [(NodeState.AVAILABLE, True), (NodeState.DEPLOYING, False)]:
        with store.session() as s:
            move_node(s, s.get_one(Node, node_id), state)
        with store.session() as s:
            assert s.get_one(Host, host_id).enabled is enabled
