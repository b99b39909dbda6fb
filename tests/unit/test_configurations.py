"""Configuration groups: values checked against the engine's own catalog, groups kept per
project, applied to every member through its agent, restart_required until a restart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import typer
from sqlalchemy import func, select

from oneplatform.cli.configurations import parse_sets
from oneplatform.dbaas import catalog_gen, configurations, replicas
from oneplatform.dbaas import service as dbaas
from oneplatform.dbaas.parameters import catalog, validate
from oneplatform.errors import (
    AlreadyExists,
    CapabilityNotSupported,
    Conflict,
    InvalidInput,
    NotFound,
)
from oneplatform.guest.bundle import Bundle
from oneplatform.schemas.configurations import ConfigurationCreate, ConfigurationUpdate
from oneplatform.schemas.databases import DbInstanceCreate, ReplicaCreate
from oneplatform.secrets import box_for
from oneplatform.store.models import ConfigurationGroup, DbInstance, DbMember, Instance
from tests.factories import caller_for, make_project
from tests.fakes import CLOUD, FakeAgent
from tests.unit import test_api
from tests.unit.test_api import Api, _create_db, _error
from tests.world import World

PG15 = catalog("postgresql", "15")
api = test_api.api  # the API in-process, as a fixture here too
CATALOGS = Path(configurations.__file__).parent / "catalogs"


# -- the catalog and validation ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "value", "normal"),
    [
        ("max_connections", "200", "200"),
        ("Max_Connections", " 200 ", "200"),
        ("work_mem", "8MB", "8MB"),
        ("work_mem", "8192kB", "8MB"),
        ("work_mem", "8192", "8MB"),  # without a unit: the parameter's own (kB)
        ("work_mem", "1.5MB", "1536kB"),
        ("shared_buffers", "1GB", "1GB"),  # its unit is 8kB pages
        ("shared_buffers", "16384", "128MB"),
        ("statement_timeout", "30s", "30s"),
        ("statement_timeout", "1500", "1500ms"),
        ("statement_timeout", "0", "0"),
        ("idle_session_timeout", "1min", "1min"),
        ("enable_seqscan", "OFF", "off"),
        ("enable_seqscan", "true", "on"),
        ("log_min_messages", "ERROR", "error"),
        ("random_page_cost", "1.5", "1.5"),
        ("application_name", "reports", "reports"),
    ],
)
def test_values_are_normalised_as_the_engine_reads_them(name: str, value: str, normal: str) -> None:
    assert validate(PG15, {name: value}) == {name.lower(): normal}


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("no_such_parameter", "1", "config_parameter_unknown"),
        ("port", "6543", "config_parameter_owned"),
        ("listen_addresses", "*", "config_parameter_owned"),
        ("data_directory", "/tmp", "config_parameter_owned"),
        ("archive_command", "true", "config_parameter_owned"),
        ("wal_level", "minimal", "config_parameter_owned"),
        ("primary_conninfo", "host=x", "config_parameter_owned"),
        ("ssl_cert_file", "/x", "config_parameter_owned"),
        ("shared_preload_libraries", "x", "config_parameter_owned"),
        ("hba_file", "/x", "config_parameter_owned"),
        ("max_connections", "0", "config_value_out_of_range"),
        ("max_connections", "262144", "config_value_out_of_range"),
        ("work_mem", "1kB", "config_value_out_of_range"),
        ("max_connections", "many", "config_value_invalid"),
        ("max_connections", "1.5", "config_value_invalid"),
        ("work_mem", "8XB", "config_value_invalid"),
        ("work_mem", "8s", "config_value_invalid"),  # a time unit on a memory parameter
        ("enable_seqscan", "maybe", "config_value_invalid"),
        ("log_min_messages", "loud", "config_value_invalid"),
        ("random_page_cost", "nan", "config_value_invalid"),
        ("application_name", "two\nlines", "config_value_invalid"),
    ],
)
def test_bad_values_are_refused_with_a_stable_code(name: str, value: str, code: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate(PG15, {name: value})
    assert caught.value.code == code
    assert caught.value.details["parameter"] == name
    if code == "config_parameter_owned":
        assert "managed by the platform" in caught.value.message


def test_the_catalog_says_what_needs_a_restart() -> None:
    params = PG15.parameters
    assert params["max_connections"].restart and params["shared_buffers"].restart
    assert not params["work_mem"].restart and not params["statement_timeout"].restart
    assert (params["work_mem"].unit, params["shared_buffers"].unit) == ("kB", "8kB")


def test_a_version_without_a_catalog_has_no_groups() -> None:
    with pytest.raises(CapabilityNotSupported) as caught:
        catalog("postgresql", "9")
    assert caught.value.details["capability"] == "configuration"


@pytest.mark.parametrize(
    ("datastore", "version", "binary"),
    [
        ("postgresql", "15", "/usr/lib/postgresql/15/bin/postgres"),
        ("mariadb", "10.11", "/usr/sbin/mariadbd"),
        ("redis", "7.0", "/usr/bin/redis-server"),
    ],
)
def test_the_checked_in_catalog_is_what_the_engine_says(
    datastore: str, version: str, binary: str
) -> None:
    """Regenerated from the host's engine (scripts/setup.sh installs the three, from the
    same Debian packages as the images); defaults aside (some follow the machine)."""
    if shutil.which("runuser") is None or not Path(binary).exists():
        pytest.skip(f"{binary} is not installed here")
    checked_in = json.loads((CATALOGS / f"{datastore}-{version}.json").read_text("utf-8"))
    fresh = catalog_gen.generate(datastore, version)

    def without_defaults(doc: dict[str, Any]) -> list[dict[str, Any]]:
        return [{k: v for k, v in p.items() if k != "default"} for p in doc["parameters"]]

    assert without_defaults(fresh) == without_defaults(checked_in)


@pytest.mark.parametrize(
    ("name", "value", "normal"),
    [
        ("max_connections", "200", "200"),
        ("max-connections", "1K", "1024"),
        ("innodb_buffer_pool_size", "256M", "268435456"),
        ("innodb_buffer_pool_size", "268435457", "268435456"),  # its block: 1 MiB
        ("slow_query_log", "1", "ON"),
        ("long_query_time", "0.5", "0.5"),
        ("sql_mode", "strict_trans_tables, no_zero_date", "STRICT_TRANS_TABLES,NO_ZERO_DATE"),
        ("optimizer_switch", "MRR=on,default", "mrr=on,default"),
    ],
)
def test_mariadb_values_are_normalised_as_it_reads_them(name: str, value: str, normal: str) -> None:
    cat = catalog("mariadb", "10.11")
    assert validate(cat, {name: value}) == {name.replace("-", "_"): normal}
    assert not cat.parameters["max_connections"].restart  # SET GLOBAL takes it


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("no_such_variable", "1", "config_parameter_unknown"),
        ("server_id", "7", "config_parameter_owned"),
        ("log_bin", "x", "config_parameter_owned"),
        ("datadir", "/tmp", "config_parameter_owned"),
        ("ssl_cert", "/x", "config_parameter_owned"),
        ("wsrep_on", "ON", "config_parameter_owned"),
        ("max_connections", "5", "config_value_out_of_range"),
        ("max_connections", "1X", "config_value_invalid"),
        ("sql_mode", "NOPE", "config_value_invalid"),
        ("optimizer_switch", "mrr=maybe", "config_value_invalid"),
    ],
)
def test_bad_mariadb_values_are_refused(name: str, value: str, code: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate(catalog("mariadb", "10.11"), {name: value})
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("name", "value", "normal"),
    [
        ("maxmemory", "100mb", "104857600"),
        ("maxmemory", "1k", "1000"),  # Redis: k is 1000, kb 1024
        ("maxmemory-policy", "ALLKEYS-LRU", "allkeys-lru"),
        ("timeout", "300", "300"),
        ("lazyfree-lazy-eviction", "on", "yes"),
        ("notify-keyspace-events", "Ex", "Ex"),
    ],
)
def test_redis_values_are_normalised_as_it_reads_them(name: str, value: str, normal: str) -> None:
    cat = catalog("redis", "7.0")
    assert validate(cat, {name: value}) == {name: normal}
    assert cat.parameters["io-threads"].restart and not cat.parameters["maxmemory"].restart


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("no-such-parameter", "1", "config_parameter_unknown"),
        ("appendonly", "no", "config_parameter_owned"),
        ("requirepass", "x", "config_parameter_owned"),
        ("replicaof", "127.0.0.1 1", "config_parameter_owned"),
        ("repl-backlog-size", "1mb", "config_parameter_owned"),
        ("timeout", "-1", "config_value_out_of_range"),
        ("timeout", "5mb", "config_value_invalid"),  # no unit: not a memory value
        ("maxmemory", "1xb", "config_value_invalid"),
        ("maxmemory-policy", "lru", "config_value_invalid"),
        ("notify-keyspace-events", "", "config_value_invalid"),  # redis.conf: no argument
        ("notify-keyspace-events", '"Ex"', "config_value_invalid"),
    ],
)
def test_bad_redis_values_are_refused(name: str, value: str, code: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate(catalog("redis", "7.0"), {name: value})
    assert caught.value.code == code


# -- groups -----------------------------------------------------------------------------------
def _group(world: World, name: str = "tuned", **values: str) -> str:
    made = configurations.create_group(
        world.store,
        world.member,
        ConfigurationCreate(
            name=name, datastore="postgresql", version="15", values=values or _TUNED
        ),
    )
    return made.id


_TUNED = {"max_connections": "200", "work_mem": "8MB"}


def _count(world: World) -> int:
    with world.store.session() as session:
        return session.scalar(select(func.count()).select_from(ConfigurationGroup)) or 0


def _active_db(world: World, name: str = "pg1", **create: str) -> str:
    accepted = dbaas.create_db(
        world.store,
        world.settings,
        world.member,
        DbInstanceCreate(name=name, flavor="container.small", **create),  # type: ignore[arg-type]
    )
    world.drive(accepted.operation.id)
    return accepted.instance.id


def _agent(world: World, db_id: str) -> FakeAgent:
    with world.store.session() as session:
        instance_id = session.get_one(DbInstance, db_id).instance_id
    agent = CLOUD.objects[str(instance_id)].agent
    assert agent is not None
    return agent


def _bundle(world: World, instance_id: str) -> Bundle:
    with world.store.session() as session:
        enc = session.get_one(Instance, instance_id).bundle_enc
    return Bundle.from_json(box_for(world.settings).decrypt(enc or ""))


def test_a_group_keeps_normalised_values_and_refuses_bad_ones_without_a_trace(
    world: World,
) -> None:
    for values in ({"nope": "1"}, {"port": "1"}, {"work_mem": "8MB", "max_connections": "-1"}):
        with pytest.raises(InvalidInput):
            _group(world, **values)
    assert _count(world) == 0
    _group(world, max_connections="200", work_mem="8192kB")
    out = configurations.get_group(world.store, world.member, "tuned")
    assert (out.datastore, out.version, out.values) == ("postgresql", "15", _TUNED)
    with pytest.raises(AlreadyExists) as caught:
        _group(world)
    assert caught.value.code == "configuration_exists"


def test_another_project_neither_sees_nor_uses_a_group(world: World) -> None:
    _group(world)
    with world.store.session() as session:
        other = caller_for(make_project(session), "member")
    assert configurations.list_groups(world.store, other) == []
    for call in (
        lambda: configurations.get_group(world.store, other, "tuned"),
        lambda: configurations.delete_group(world.store, other, "tuned"),
        lambda: configurations.update_group(
            world.store, world.settings, other, "tuned", ConfigurationUpdate()
        ),
    ):
        with pytest.raises(NotFound) as caught:
            call()
        assert caught.value.code == "configuration_not_found"
    _active_db(world, "theirs", datastore="postgresql")
    with pytest.raises(NotFound):  # its database cannot take my group, nor mine theirs
        configurations.attach(world.store, world.settings, other, "theirs", "tuned")
    _group(world, "mine")  # the same name may exist in two projects
    configurations.create_group(
        world.store, other, ConfigurationCreate(name="mine", values={"work_mem": "4MB"})
    )
    assert [g.name for g in configurations.list_groups(world.store, other)] == ["mine"]


def test_attach_applies_live_and_a_restart_clears_restart_required(world: World) -> None:
    db_id = _active_db(world)
    _group(world)
    agent = _agent(world, db_id)
    out = dbaas.attach_configuration(world.store, world.settings, world.member, "pg1", "tuned")
    assert (out.configuration, out.restart_required) == ("tuned", True)
    assert agent.configuration == _TUNED and agent.waiting == {"max_connections"}
    shown = configurations.get_group(world.store, world.member, "tuned")
    assert [(i.name, i.restart_required) for i in shown.instances] == [("pg1", True)]
    with pytest.raises(Conflict) as caught:
        configurations.delete_group(world.store, world.member, "tuned")
    assert caught.value.code == "configuration_in_use"

    accepted = dbaas.restart_db(world.store, world.settings, world.member, "pg1")
    assert [s.name for s in accepted.operation.steps][-2:] == ["configuration", "finish"]
    assert world.drive(accepted.operation.id).status == "SUCCEEDED"
    out = dbaas.get_db(world.store, world.member, "pg1")
    assert (out.status, out.configuration, out.restart_required) == ("ACTIVE", "tuned", False)
    assert agent.restarts == 1


def test_an_update_reaches_every_database_using_the_group(world: World) -> None:
    first, second = _active_db(world, "pg1"), _active_db(world, "pg2")
    _group(world, work_mem="8MB")
    for name in ("pg1", "pg2"):
        dbaas.attach_configuration(world.store, world.settings, world.member, name, "tuned")
    out = configurations.update_group(
        world.store,
        world.settings,
        world.member,
        "tuned",
        ConfigurationUpdate(values={"statement_timeout": "30s"}, unset=["work_mem"]),
    )
    assert out.values == {"statement_timeout": "30s"}
    for db_id in (first, second):
        assert _agent(world, db_id).configuration == {"statement_timeout": "30s"}
    assert not dbaas.get_db(world.store, world.member, "pg1").restart_required
    with pytest.raises(InvalidInput) as caught:  # a bad value changes nothing anywhere
        configurations.update_group(
            world.store,
            world.settings,
            world.member,
            "tuned",
            ConfigurationUpdate(values={"max_connections": "0"}),
        )
    assert caught.value.code == "config_value_out_of_range"
    assert _agent(world, first).configuration == {"statement_timeout": "30s"}
    assert configurations.get_group(world.store, world.member, "tuned").values == out.values


def test_attach_refuses_a_database_not_active_and_changes_nothing(world: World) -> None:
    accepted = dbaas.create_db(
        world.store,
        world.settings,
        world.member,
        DbInstanceCreate(name="pg1", flavor="container.small"),
    )
    _group(world)
    with pytest.raises(Conflict) as caught:
        configurations.attach(world.store, world.settings, world.member, "pg1", "tuned")
    assert caught.value.code == "invalid_state"
    world.drive(accepted.operation.id)
    out = dbaas.get_db(world.store, world.member, "pg1")
    assert (out.configuration, out.restart_required) == (None, False)


def test_detach_gives_the_engine_back_its_own_settings(world: World) -> None:
    db_id = _active_db(world)
    _group(world)
    dbaas.attach_configuration(world.store, world.settings, world.member, "pg1", "tuned")
    world.drive(dbaas.restart_db(world.store, world.settings, world.member, "pg1").operation.id)
    out = dbaas.detach_configuration(world.store, world.settings, world.member, "pg1")
    assert (out.configuration, out.restart_required) == (None, True)  # max_connections again
    assert _agent(world, db_id).configuration == {}
    with pytest.raises(Conflict) as caught:
        configurations.detach(world.store, world.settings, world.member, "pg1")
    assert caught.value.code == "configuration_not_attached"
    configurations.delete_group(world.store, world.member, "tuned")
    assert _count(world) == 0


def test_a_group_of_a_deleted_database_can_be_deleted(world: World) -> None:
    _active_db(world)
    _group(world)
    dbaas.attach_configuration(world.store, world.settings, world.member, "pg1", "tuned")
    world.drive(dbaas.delete_db(world.store, world.member, "pg1").operation.id)
    assert configurations.get_group(world.store, world.member, "tuned").instances == []
    configurations.delete_group(world.store, world.member, "tuned")
    assert _count(world) == 0


def test_a_new_database_starts_with_the_groups_values(world: World) -> None:
    _group(world)
    db_id = _active_db(world, configuration="tuned")
    out = dbaas.get_db(world.store, world.member, "pg1")
    assert (out.configuration, out.restart_required) == ("tuned", False)
    with world.store.session() as session:
        instance_id = str(session.get_one(DbInstance, db_id).instance_id)
    bundle = _bundle(world, instance_id)
    assert dict(bundle.engine.configuration) == _TUNED
    assert bundle.engine.settings["work_mem"] == "4MB"  # the flavor's, under the group's


def test_a_create_with_another_versions_or_projects_group_is_refused(world: World) -> None:
    with world.store.session() as session:
        other = caller_for(make_project(session), "member")
    configurations.create_group(world.store, other, ConfigurationCreate(name="theirs"))
    with pytest.raises(NotFound):
        dbaas.create_db(
            world.store,
            world.settings,
            world.member,
            DbInstanceCreate(name="pg1", flavor="container.small", configuration="theirs"),
        )
    with world.store.session() as session:
        assert session.scalar(select(func.count()).select_from(DbInstance)) == 0


def test_a_replica_starts_with_the_group_and_restarts_before_its_primary(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeAgent, "replayed", 6000)
    db_id = _active_db(world)
    _group(world)
    dbaas.attach_configuration(world.store, world.settings, world.member, "pg1", "tuned")
    accepted = replicas.create_replica(
        world.store, world.settings, world.member, "pg1", ReplicaCreate(flavor="vm.small")
    )
    assert world.drive(accepted.operation.id).status == "SUCCEEDED"
    with world.store.session() as session:
        member = session.scalars(select(DbMember).where(DbMember.name == "pg1-r1")).one()
        replica_instance = member.instance_id
    assert dict(_bundle(world, replica_instance).engine.configuration) == _TUNED
    replica = CLOUD.objects[replica_instance].agent
    assert replica is not None and replica.configuration == _TUNED
    primary = _agent(world, db_id)
    world.drive(dbaas.restart_db(world.store, world.settings, world.member, "pg1").operation.id)
    assert (replica.restarts, primary.restarts) == (1, 1)  # a standby needs max_connections
    assert not dbaas.get_db(world.store, world.member, "pg1").restart_required
    configurations.update_group(
        world.store,
        world.settings,
        world.member,
        "tuned",
        ConfigurationUpdate(values={"work_mem": "16MB"}),
    )
    assert replica.configuration["work_mem"] == primary.configuration["work_mem"] == "16MB"


# -- over HTTP --------------------------------------------------------------------------------
GROUPS = "/v1/db/configurations"


def test_the_api_refuses_bad_values_with_their_codes_and_writes_nothing(api: Api) -> None:
    for values, status, code in (
        ({"nope": "1"}, 422, "config_parameter_unknown"),
        ({"port": "1"}, 422, "config_parameter_owned"),
        ({"max_connections": "100000000"}, 422, "config_value_out_of_range"),
        ({"max_connections": "lots"}, 422, "config_value_invalid"),
        ({"bad name!": "1"}, 422, "invalid_input"),
    ):
        body = {"name": "g1", "datastore": "postgresql", "values": values}
        error = _error(api.client.post(GROUPS, json=body, headers=api.admin), status, code)
        assert code == "invalid_input" or error["details"]["parameter"]
    _error(
        api.client.post(GROUPS, json={"name": "g1", "datastore": "oracle"}, headers=api.admin),
        404,
        "datastore_not_found",
    )
    _error(
        api.client.post(GROUPS, json={"name": "g1", "version": "9"}, headers=api.admin),
        404,
        "datastore_version_not_found",
    )
    assert api.client.get(GROUPS, headers=api.admin).json() == []


def test_the_api_keeps_groups_to_their_project(api: Api) -> None:
    body = {"name": "g1", "values": {"work_mem": "8MB", "max_connections": "200"}}
    created = api.client.post(GROUPS, json=body, headers=api.admin)
    assert created.status_code == 201, created.text
    group = created.json()
    assert (group["datastore"], group["version"], group["instances"]) == ("postgresql", "15", [])
    for method, path, payload in (
        ("GET", f"{GROUPS}/g1", None),
        ("GET", f"{GROUPS}/{group['id']}", None),
        ("PATCH", f"{GROUPS}/g1", {"values": {"work_mem": "16MB"}}),
        ("DELETE", f"{GROUPS}/g1", None),
    ):
        response = api.client.request(method, path, json=payload, headers=api.other)
        _error(response, 404, "configuration_not_found")
    assert api.client.get(GROUPS, headers=api.other).json() == []
    db = _create_db(api, "pg1")["instance"]
    attach = api.client.put(
        f"/v1/db/instances/{db['id']}/configuration",
        json={"configuration": "g1"},
        headers=api.admin,
    )
    _error(attach, 409, "invalid_state")  # still BUILD: nothing applied, nothing recorded
    assert api.client.get(f"{GROUPS}/g1", headers=api.admin).json()["instances"] == []
    params = api.client.get(
        "/v1/datastores/postgresql/versions/15/parameters", headers=api.admin
    ).json()
    names = {p["name"]: p for p in params}
    assert names["max_connections"]["restart_required"] is True and "port" not in names
    assert api.client.delete(f"{GROUPS}/g1", headers=api.admin).status_code == 204


def test_a_reader_sees_groups_but_cannot_change_them(api: Api) -> None:
    assert api.client.post(GROUPS, json={"name": "g1"}, headers=api.admin).status_code == 201
    made = api.client.post("/v1/tokens", json={"name": "ro", "role": "reader"}, headers=api.admin)
    assert made.status_code == 201, made.text
    reader = {"Authorization": f"Bearer {made.json()['token']}"}
    assert [g["name"] for g in api.client.get(GROUPS, headers=reader).json()] == ["g1"]
    for method, path, payload in (
        ("POST", GROUPS, {"name": "g2"}),
        ("PATCH", f"{GROUPS}/g1", {"values": {"work_mem": "16MB"}}),
        ("DELETE", f"{GROUPS}/g1", None),
        ("PUT", "/v1/db/instances/pg1/configuration", {"configuration": "g1"}),
        ("DELETE", "/v1/db/instances/pg1/configuration", None),
    ):
        response = api.client.request(method, path, json=payload, headers=reader)
        _error(response, 403, "read_only")
    assert [g["name"] for g in api.client.get(GROUPS, headers=api.admin).json()] == ["g1"]


# -- the CLI's own parsing --------------------------------------------------------------------
def test_set_options_are_name_value_pairs() -> None:
    assert parse_sets(["max_connections=200", " work_mem = 8MB ", "search_path=a=b"]) == {
        "max_connections": "200",
        "work_mem": "8MB",
        "search_path": "a=b",
    }
    for bad in (["work_mem"], ["=8MB"]):
        with pytest.raises(typer.Exit):
            parse_sets(bad)
