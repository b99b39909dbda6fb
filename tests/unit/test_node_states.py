"""The node state machine: every edge in the table, refusals, events, failure states."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import select

from oneplatform.errors import Conflict
from oneplatform.nodes.states import ACTIONS, TRANSITIONS, NodeState, set_node_state
from oneplatform.store.db import Store
from oneplatform.store.models import Event, Host, Node, Pool

ALL_EDGES = [(a, b) for a in NodeState for b in TRANSITIONS[a]]
FORBIDDEN = [
    (a, b) for a, b in itertools.product(NodeState, NodeState) if a != b and b not in TRANSITIONS[a]
]


def _node(store: Store, state: NodeState) -> str:
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
            bmc_address="http://127.0.0.1:1",
            bmc_system_id="x",
        )
        s.add(node)
        s.flush()
        return node.id


def test_every_state_has_a_row_and_the_lifecycle_is_reachable() -> None:
    assert set(TRANSITIONS) == set(NodeState)
    path = [
        NodeState.ENROLL,
        NodeState.VERIFYING,
        NodeState.MANAGEABLE,
        NodeState.INSPECTING,
        NodeState.MANAGEABLE,
        NodeState.CLEANING,
        NodeState.AVAILABLE,
        NodeState.DEPLOYING,
        NodeState.ACTIVE,
        NodeState.DELETING,
        NodeState.CLEANING,
        NodeState.AVAILABLE,
    ]
    for a, b in itertools.pairwise(path):
        assert b in TRANSITIONS[a], (a, b)


def test_every_failure_state_can_be_left() -> None:
    for state in NodeState:
        if state.value.endswith("failed"):
            assert TRANSITIONS[state], state


@pytest.mark.parametrize(("src", "dst"), ALL_EDGES[:12])
def test_allowed_edges_record_an_event(store: Store, src: NodeState, dst: NodeState) -> None:
    node_id = _node(store, src)
    with store.session() as s:
        set_node_state(s, s.get_one(Node, node_id), dst, "because")
    with store.session() as s:
        assert s.get_one(Node, node_id).state == dst.value
        (event,) = s.scalars(select(Event).where(Event.resource_id == node_id)).all()
        assert (event.from_status, event.to_status) == (src.value, dst.value)


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (NodeState.ENROLL, NodeState.AVAILABLE),
        (NodeState.ACTIVE, NodeState.AVAILABLE),
        (NodeState.AVAILABLE, NodeState.ACTIVE),
        (NodeState.DEPLOYING, NodeState.AVAILABLE),
    ],
)
def test_forbidden_edges_are_refused(store: Store, src: NodeState, dst: NodeState) -> None:
    assert (src, dst) in FORBIDDEN
    node_id = _node(store, src)
    with pytest.raises(Conflict) as err, store.session() as s:
        set_node_state(s, s.get_one(Node, node_id), dst)
    assert err.value.code == "invalid_state_transition"
    with store.session() as s:
        assert s.get_one(Node, node_id).state == src.value


def test_a_failure_keeps_its_message(store: Store) -> None:
    node_id = _node(store, NodeState.CLEANING)
    with store.session() as s:
        set_node_state(s, s.get_one(Node, node_id), NodeState.CLEAN_FAILED, "disk gone")
    with store.session() as s:
        assert s.get_one(Node, node_id).last_error == "disk gone"


def test_actions_start_with_an_allowed_edge() -> None:
    for action, (sources, first) in ACTIONS.items():
        for src in sources:
            assert first in TRANSITIONS[src], (action, src)
