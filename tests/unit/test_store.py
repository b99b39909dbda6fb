"""The store: migrations match the models, timestamps are UTC, the live-name index."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, func, inspect, select
from sqlalchemy.exc import IntegrityError, StatementError

from oneplatform.store.db import Store, alembic_config, make_engine, upgrade
from oneplatform.store.models import Base, Event, Instance, Project, utcnow
from tests.factories import make_flavor, make_instance, make_project, make_ready_image


def _diff(store: Store, metadata: MetaData) -> list[object]:
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, metadata))


# -- migrations ------------------------------------------------------------------------------
def test_migrations_reach_head(store: Store) -> None:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    with store.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head
    tables = set(inspect(store.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables


def test_models_and_migrations_do_not_drift(store: Store) -> None:
    assert _diff(store, Base.metadata) == []


def test_drift_check_would_notice_a_model_change(store: Store) -> None:
    """The comparison above is not vacuous: a model the migrations lack shows up."""
    changed = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    Table("not_migrated", changed, Column("id", Integer, primary_key=True))
    changed.tables["projects"].append_column(Column("extra", String(8), nullable=True))
    diff = _diff(store, changed)
    kinds = {(d[0], getattr(d[-1], "name", None)) for d in diff if isinstance(d, tuple)}
    assert ("add_table", "not_migrated") in kinds
    assert ("add_column", "extra") in kinds


def test_migrations_downgrade_to_base_and_up_again(store: Store) -> None:
    cfg = alembic_config(store.engine)
    command.downgrade(cfg, "base")
    assert not set(Base.metadata.tables) & set(inspect(store.engine).get_table_names())
    store.migrate()
    assert _diff(store, Base.metadata) == []


# -- timestamps ------------------------------------------------------------------------------
def test_timestamps_round_trip_as_aware_utc(store: Store) -> None:
    plus_five = dt.timezone(dt.timedelta(hours=5, minutes=30))
    moment = dt.datetime(2031, 3, 4, 5, 6, 7, 890123, tzinfo=plus_five)
    before = utcnow()
    with store.session() as session:
        project = make_project(session)
        project.created_at = moment
    with store.session() as session:
        row = session.get_one(Project, project.id)
        assert row.created_at.tzinfo is not None
        assert row.created_at.utcoffset() == dt.timedelta(0)
        assert row.created_at == moment
        assert (row.created_at.hour, row.created_at.minute) == (23, 36)  # 05:06 at +05:30
        assert row.created_at.microsecond == 890123
        # Defaults are aware UTC too, and "now".
        assert row.updated_at.utcoffset() == dt.timedelta(0)
        assert before <= row.updated_at <= utcnow()
        # A bare column select goes through the same type.
        raw = session.scalars(select(Project.created_at).where(Project.id == project.id)).one()
        assert raw == moment
        assert raw.utcoffset() == dt.timedelta(0)


def test_timestamps_are_compared_as_instants(store: Store) -> None:
    """Queries filter by instant, whatever zone the bound value is written in."""
    with store.session() as session:
        session.add(Event(resource_type="t", resource_id="r", to_status="A"))
    later_elsewhere = (utcnow() + dt.timedelta(minutes=10)).astimezone(
        dt.timezone(dt.timedelta(hours=-8))
    )
    earlier_elsewhere = (utcnow() - dt.timedelta(minutes=10)).astimezone(
        dt.timezone(dt.timedelta(hours=9))
    )
    with store.session() as session:
        assert session.scalars(select(Event).where(Event.created_at < later_elsewhere)).all()
        assert not session.scalars(select(Event).where(Event.created_at < earlier_elsewhere)).all()


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(StatementError, match="naive datetime"), store.session() as session:
        project = make_project(session)
        project.created_at = dt.datetime(2030, 1, 1)  # naive: the point of the test
        session.flush()
    with store.session() as session:
        assert session.scalars(select(Project)).all() == []


# -- live instance names ---------------------------------------------------------------------
def test_live_instance_names_are_unique_per_project(store: Store) -> None:
    with store.session() as session:
        project, other = make_project(session), make_project(session)
        flavor, image = make_flavor(session), make_ready_image(session)
        first = make_instance(session, project, flavor, image, None, name="db")
        make_instance(session, other, flavor, image, None, name="db")  # other project: fine

    with pytest.raises(IntegrityError), store.session() as session:
        make_instance(session, project, flavor, image, None, name="db")

    # Once the first is deleted its name is free again, any number of times.
    with store.session() as session:
        session.get_one(Instance, first.id).deleted_at = utcnow()
    with store.session() as session:
        second = make_instance(session, project, flavor, image, None, name="db")
    with store.session() as session:
        session.get_one(Instance, second.id).deleted_at = utcnow()
    with store.session() as session:
        make_instance(session, project, flavor, image, None, name="db")

    # ... but only one of them may be live.
    with pytest.raises(IntegrityError), store.session() as session:
        session.get_one(Instance, second.id).deleted_at = None
        session.flush()

    with store.session() as session:
        rows = session.scalars(
            select(Instance).where(Instance.project_id == project.id, Instance.name == "db")
        ).all()
        assert len(rows) == 3
        assert sum(r.deleted_at is None for r in rows) == 1


def _filler(column: Column[Any], n: int) -> object:
    try:
        kind = column.type.python_type
    except NotImplementedError:  # JSON
        kind = dict
    if kind in (int, float):
        return 1
    if kind is bool:
        return False
    if kind is dt.datetime:
        return utcnow()
    if kind in (dict, list):
        return {} if kind is dict else []
    return f"x{n}"


def _insert(conn: Connection, table: str, n: int, **given: object) -> None:
    """A row of ``table`` as the store holds it at that revision: ``given``, and a value for
    every other column that needs one."""
    reflected = Table(table, MetaData(), autoload_with=conn)
    row: dict[str, object] = dict(given)
    for column in reflected.columns:
        if column.name in row or column.nullable or column.server_default is not None:
            continue
        row[column.name] = _filler(column, n)
    conn.execute(reflected.insert().values(**row))


def test_a_store_in_use_migrates_to_head(store_url: str) -> None:
    """The migrations since 0018 on a store with rows that others refer to (a pool with a
    host, a flavor with an instance, a token with a dashboard session): on SQLite a batch
    migration copies and drops such tables, which their foreign keys must survive."""
    engine = make_engine(store_url)
    try:
        upgrade(engine, "0018")
        with engine.begin() as conn:
            _insert(conn, "projects", 1, id="p1", name="p1")
            _insert(conn, "pools", 2, id="pool1", name="pool1", compute_type="container")
            _insert(conn, "hosts", 3, id="h1", name="h1", pool_id="pool1", uri="local")
            _insert(conn, "flavors", 4, id="f1", name="f1", compute_type="container")
            _insert(conn, "images", 5, id="i1", name="i1")
            _insert(
                conn, "instances", 6, id="in1", name="in1", project_id="p1", flavor_id="f1",
                image_id="i1", host_id="h1", deleted_at=None,
            )  # fmt: skip
            _insert(conn, "tokens", 7, id="t1", project_id="p1", name="t1")
            _insert(conn, "ui_sessions", 8, id="u1", token_id="t1")
        upgrade(engine, "head")
        with engine.connect() as conn:
            counted = [
                conn.execute(select(func.count()).select_from(Table(t, MetaData()))).scalar()
                for t in ("pools", "hosts", "flavors", "instances", "tokens", "ui_sessions")
            ]
            assert counted == [1] * 6
            owner = conn.exec_driver_sql("SELECT project_id, pool_id FROM flavors").one()
            assert tuple(owner) == (None, None)  # a shared flavor, as before
        if engine.dialect.name == "sqlite":  # and the checks are on again afterwards
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()
