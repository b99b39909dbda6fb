"""The instance state machine: the transition table and the one function that applies it."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import select

from oneplatform.compute.lifecycle import set_status
from oneplatform.compute.states import TRANSITIONS, InstanceStatus, can_transition
from oneplatform.errors import Conflict
from oneplatform.store.db import Store
from oneplatform.store.models import Event, Instance
from tests.factories import make_flavor, make_instance, make_project, make_ready_image

S = InstanceStatus
ALL_EDGES = [(src, dst) for src, targets in TRANSITIONS.items() for dst in sorted(targets)]
FORBIDDEN = [
    (src, dst)
    for src, dst in itertools.product(S, S)
    if src is not dst and dst not in TRANSITIONS[src]
]


def test_every_status_has_a_row() -> None:
    assert set(TRANSITIONS) == set(S)
    for src, targets in TRANSITIONS.items():
        assert src not in targets, f"{src} lists itself"


@pytest.mark.parametrize(("src", "dst"), ALL_EDGES, ids=[f"{a}->{b}" for a, b in ALL_EDGES])
def test_table_edges_are_allowed(src: InstanceStatus, dst: InstanceStatus) -> None:
    assert can_transition(src, dst)


def test_edges_outside_the_table_are_refused() -> None:
    assert FORBIDDEN  # the table is not complete, so there is something to refuse
    for src, dst in FORBIDDEN:
        assert not can_transition(src, dst), f"{src}->{dst}"
    for src, dst in [
        (S.BUILD, S.SHUTOFF),
        (S.SHUTOFF, S.STOPPING),
        (S.DELETING, S.ACTIVE),
        (S.STOPPING, S.STARTING),
        (S.BUILD, S.DELETED),  # only DELETING leads to DELETED
        (S.ACTIVE, S.DELETED),
    ]:
        assert not can_transition(src, dst), f"{src}->{dst}"


def test_deleted_is_final() -> None:
    assert S.DELETED.is_final
    assert [s for s in S if s.is_final] == [S.DELETED]
    assert TRANSITIONS[S.DELETED] == frozenset()
    assert not any(can_transition(S.DELETED, s) for s in S)
    # Everything can be deleted: every status but DELETED reaches it through DELETING.
    for s in S:
        if s is not S.DELETED:
            assert can_transition(s, S.DELETING) or s is S.DELETING, s
    assert [s for s in S if can_transition(s, S.DELETED)] == [S.DELETING]


# -- set_status ------------------------------------------------------------------------------
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


def _events(store: Store, instance_id: str) -> list[tuple[str | None, str, str]]:
    with store.session() as session:
        rows = session.scalars(
            select(Event).where(Event.resource_id == instance_id).order_by(Event.id)
        )
        return [(e.from_status, e.to_status, e.message) for e in rows]


def test_set_status_records_an_event_per_change(store: Store) -> None:
    iid = _instance(store, S.BUILD)
    path = [S.ACTIVE, S.STOPPING, S.SHUTOFF, S.STARTING, S.ACTIVE]
    for new in path:
        with store.session() as session:
            set_status(session, session.get_one(Instance, iid), new, f"to {new}")
    with store.session() as session:
        row = session.get_one(Instance, iid)
        assert (row.status, row.status_message) == ("ACTIVE", "to ACTIVE")
        assert row.deleted_at is None
    froms = [S.BUILD.value] + [s.value for s in path[:-1]]
    assert _events(store, iid) == [
        (a, b.value, f"to {b}") for a, b in zip(froms, path, strict=True)
    ]


def test_set_status_to_the_same_status_only_updates_the_message(store: Store) -> None:
    iid = _instance(store, S.ACTIVE)
    with store.session() as session:
        set_status(session, session.get_one(Instance, iid), S.ACTIVE, "still fine")
    with store.session() as session:
        row = session.get_one(Instance, iid)
        assert (row.status, row.status_message) == ("ACTIVE", "still fine")
    assert _events(store, iid) == []


@pytest.mark.parametrize(
    ("src", "dst"), [(S.BUILD, S.SHUTOFF), (S.DELETING, S.ACTIVE), (S.SHUTOFF, S.REBOOT)]
)
def test_set_status_refuses_a_forbidden_change(
    store: Store, src: InstanceStatus, dst: InstanceStatus
) -> None:
    iid = _instance(store, src)
    with store.session() as session:
        row = session.get_one(Instance, iid)
        with pytest.raises(Conflict) as info:
            set_status(session, row, dst, "nope")
        assert info.value.code == "invalid_state_transition"
        assert info.value.status == 409
        # Refused before anything changed, even in memory: this transaction may go on.
        assert (row.status, row.status_message) == (src.value, "as made")
    with store.session() as session:
        row = session.get_one(Instance, iid)
        assert (row.status, row.status_message, row.deleted_at) == (src.value, "as made", None)
    assert _events(store, iid) == []


def test_deleted_instances_stay_deleted(store: Store) -> None:
    iid = _instance(store, S.ACTIVE)
    for new in (S.DELETING, S.DELETED):
        with store.session() as session:
            set_status(session, session.get_one(Instance, iid), new, "going")
    with store.session() as session:
        row = session.get_one(Instance, iid)
        assert row.status == "DELETED"
        assert row.deleted_at is not None
        deleted_at = row.deleted_at
    for new in S:
        if new is S.DELETED:
            continue
        with store.session() as session, pytest.raises(Conflict, match="from DELETED"):
            set_status(session, session.get_one(Instance, iid), new)
    with store.session() as session:
        row = session.get_one(Instance, iid)
        assert (row.status, row.deleted_at) == ("DELETED", deleted_at)
    assert [e[1] for e in _events(store, iid)] == ["DELETING", "DELETED"]
