# ruff: noqa: F811  (test_api.py's fixture ``api`` is imported and used as a parameter)
"""The Trove v1.0 facade in-process: Trove's shapes, status codes and faults, project
isolation, lookups by id and name; then the real python-troveclient against a real server.

No worker runs (as in test_api.py): a created instance stays BUILD, which is what Trove's
clients read first. What needs a running database is tests/e2e/test_trove_cli.py's.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.requests import Request

from oneplatform.api.trove import instances, views
from oneplatform.api.trove.lookup import find
from oneplatform.api.trove.objects import user_name
from oneplatform.errors import NotFound
from oneplatform.schemas.databases import DbInstanceOut, DbMemberOut
from oneplatform.store.models import Flavor
from tests.unit.test_api import Api, api  # noqa: F401 (the fixture)

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")
PG = {"type": "postgresql", "version": "15"}


def _token(headers: dict[str, str]) -> dict[str, str]:
    """The same token as OpenStack's clients send it."""
    return {"X-Auth-Token": headers["Authorization"].removeprefix("Bearer ")}


def _pid(api: Api, headers: dict[str, str]) -> str:
    return api.client.get("/v1/whoami", headers=headers).json()["project"]["id"]


@pytest.fixture
def trove(api: Api) -> tuple[str, dict[str, str]]:
    """The base path of project other's facade and its member token as X-Auth-Token."""
    return f"/v1.0/{_pid(api, api.other)}", _token(api.other)


def _fault(response, status: int, name: str, code: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == [name], body
    assert body[name]["code"] == status and body[name]["message"]
    if code is not None:
        assert body[name]["error_code"] == code, body
    return body[name]


def _instance(
    api: Api, base: str, headers: dict[str, str], name: str = "pg1", **more: object
) -> dict:
    body = {
        "instance": {
            "name": name,
            "flavorRef": "container.small",
            "volume": {"size": 1, "type": None},
            "datastore": PG,
            "databases": [{"name": "appdb"}],
            "users": [
                {"name": "alice", "password": "S3cret-pass-1", "databases": [{"name": "appdb"}]}
            ],
            "nics": [],
            "availability_zone": None,
            **more,
        }
    }
    response = api.client.post(f"{base}/instances", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["instance"]


# -- authentication and project isolation ------------------------------------------------------
def test_the_token_is_taken_from_x_auth_token_or_bearer(api: Api, trove) -> None:
    base, headers = trove
    assert api.client.get(f"{base}/flavors", headers=headers).status_code == 200
    assert api.client.get(f"{base}/flavors", headers=api.other).status_code == 200
    # one token resolution for every route: the platform's own API takes X-Auth-Token too
    me = api.client.get("/v1/whoami", headers=headers)
    assert me.status_code == 200 and me.json()["project"]["name"] == "other"
    _fault(api.client.get(f"{base}/flavors"), 401, "unauthorized", "token_missing")
    bad = {"X-Auth-Token": "onep_not-a-token"}
    _fault(api.client.get(f"{base}/instances", headers=bad), 401, "unauthorized", "token_invalid")


@pytest.mark.parametrize(
    ("method", "tail", "body"),
    [
        ("GET", "/flavors", None),
        ("GET", "/instances", None),
        ("POST", "/instances", {"instance": {"name": "x", "flavorRef": "container.small"}}),
        ("GET", "/backups", None),
        ("POST", "/configurations", {"configuration": {"name": "c", "values": {}}}),
    ],
)
def test_a_foreign_or_unknown_project_id_is_403(
    api: Api,
    trove,
    method: str,
    tail: str,
    body: object,
) -> None:
    _base, headers = trove
    before = api.counts()
    foreign = f"/v1.0/{_pid(api, api.admin)}{tail}"
    for path in (foreign, f"/v1.0/0123456789abcdef0123456789abcdef{tail}", f"/v1.0/x{tail}"):
        response = api.client.request(method, path, json=body, headers=headers)
        _fault(response, 403, "forbidden", "foreign_project")
    assert api.counts() == before


def test_another_projects_instance_is_not_found_on_its_own_path(api: Api, trove) -> None:
    base, headers = trove
    theirs = _instance(api, f"/v1.0/{_pid(api, api.admin)}", _token(api.admin), "theirs")
    _fault(api.client.get(f"{base}/instances/{theirs['id']}", headers=headers), 404, "itemNotFound")
    listed = api.client.get(f"{base}/instances", headers=headers).json()
    assert listed == {"instances": []}


# -- faults --------------------------------------------------------------------------------------
def test_every_refusal_is_a_trove_fault(api: Api, trove) -> None:
    base, headers = trove
    before = api.counts()
    _fault(api.client.post(f"{base}/instances", json={}, headers=headers), 400, "badRequest")
    _fault(api.client.post(f"{base}/instances", content=b"{", headers=headers), 400, "badRequest")
    for unknown in ("nope", "0" * 32, "%20", "-1"):
        got = api.client.get(f"{base}/instances/{unknown}", headers=headers)
        _fault(got, 404, "itemNotFound")
    _fault(api.client.get(f"{base}/no-such-thing", headers=headers), 404, "itemNotFound")
    _fault(api.client.patch(f"{base}/flavors", headers=headers), 405, "badMethod")
    bad_name = {"instance": {"name": "Bad Name", "flavorRef": "container.small"}}
    _fault(api.client.post(f"{base}/instances", json=bad_name, headers=headers), 400, "badRequest")
    no_flavor = {"instance": {"name": "pg9", "flavorRef": "no.such"}}
    _fault(
        api.client.post(f"{base}/instances", json=no_flavor, headers=headers),
        404,
        "itemNotFound",
        "flavor_not_found",
    )
    assert api.counts() == before
    assert "detail" not in api.client.post(f"{base}/instances", json={}, headers=headers).text


def test_a_body_over_the_limit_is_over_limit(api: Api, trove) -> None:
    base, headers = trove
    got = api.client.post(f"{base}/instances", content=b"x" * (1024 * 1024 + 1), headers=headers)
    _fault(got, 413, "overLimit", "body_too_large")


def test_a_quota_refusal_is_over_limit(api: Api, trove) -> None:
    base, headers = trove
    quota = api.client.patch("/v1/projects/other/quota", json={"databases": 0}, headers=api.admin)
    assert quota.status_code == 200, quota.text
    body = {"instance": {"name": "pg1", "flavorRef": "container.small", "datastore": PG}}
    got = api.client.post(f"{base}/instances", json=body, headers=headers)
    _fault(got, 413, "overLimit", "quota_exceeded")


def test_a_reader_may_only_read(api: Api, trove) -> None:
    base, _headers = trove
    made = api.client.post("/v1/tokens", json={"name": "ro", "role": "reader"}, headers=api.other)
    reader = {"X-Auth-Token": made.json()["token"]}
    assert api.client.get(f"{base}/instances", headers=reader).status_code == 200
    body = {"instance": {"name": "pg1", "flavorRef": "container.small"}}
    got = api.client.post(f"{base}/instances", json=body, headers=reader)
    _fault(got, 403, "forbidden", "read_only")


# -- flavors and datastores ----------------------------------------------------------------------
def test_flavors_in_trove_shape_by_id_and_name(api: Api, trove) -> None:
    base, headers = trove
    flavors = api.client.get(f"{base}/flavors", headers=headers).json()["flavors"]
    small = next(f for f in flavors if f["name"] == "container.small")
    assert small["id"] is None and isinstance(small["str_id"], str)  # non-numeric id: null
    assert (small["ram"], small["vcpus"], small["disk"], small["ephemeral"]) == (512, 1, 2, 0)
    assert small["compute_type"] == "container"
    assert small["links"][0] == {
        "rel": "self",
        "href": f"http://testserver{base}/flavors/{small['str_id']}",
    }
    for ident in (small["str_id"], "container.small"):
        shown = api.client.get(f"{base}/flavors/{ident}", headers=headers)
        assert shown.json() == {"flavor": small}
    _fault(api.client.get(f"{base}/flavors/42", headers=headers), 404, "itemNotFound")


def test_a_projects_own_flavor_is_listed_for_it_only(api: Api, trove) -> None:
    base, headers = trove
    with api.store.session() as s:  # as a cluster of project other makes it
        s.add(
            Flavor(
                name="c1.small",
                compute_type="container",
                vcpus=1,
                ram_mb=512,
                disk_gb=1,
                project_id=_pid(api, api.other),
            )
        )
    names = {
        f["name"] for f in api.client.get(f"{base}/flavors", headers=headers).json()["flavors"]
    }
    assert {"c1.small", "container.small"} <= names
    assert api.client.get(f"{base}/flavors/c1.small", headers=headers).status_code == 200
    admin_base = f"/v1.0/{_pid(api, api.admin)}"
    theirs = api.client.get(f"{admin_base}/flavors", headers=_token(api.admin)).json()["flavors"]
    assert "c1.small" not in {f["name"] for f in theirs}
    _fault(
        api.client.get(f"{admin_base}/flavors/c1.small", headers=_token(api.admin)),
        404,
        "itemNotFound",
    )


def test_datastores_and_versions_by_name_or_id(api: Api, trove) -> None:
    base, headers = trove
    stores = api.client.get(f"{base}/datastores", headers=headers).json()["datastores"]
    pg = next(d for d in stores if d["name"] == "postgresql")
    v15 = next(v for v in pg["versions"] if v["name"] == "15")
    assert pg["default_version"] in {v["id"] for v in pg["versions"]}
    for ds in ("postgresql", pg["id"]):
        assert api.client.get(f"{base}/datastores/{ds}", headers=headers).json()["datastore"] == pg
        for version in ("15", v15["id"]):
            shown = api.client.get(f"{base}/datastores/{ds}/versions/{version}", headers=headers)
            assert shown.json()["version"]["id"] == v15["id"], shown.text
            assert shown.json()["version"]["datastore"] == pg["id"]
    by_id = api.client.get(f"{base}/datastores/versions/{v15['id']}", headers=headers).json()
    assert by_id["version"]["name"] == "15"
    listed = api.client.get(f"{base}/datastores/postgresql/versions", headers=headers).json()
    assert v15["id"] in {v["id"] for v in listed["versions"]}
    _fault(api.client.get(f"{base}/datastores/oracle", headers=headers), 404, "itemNotFound")
    _fault(
        api.client.get(f"{base}/datastores/postgresql/versions/9", headers=headers),
        404,
        "itemNotFound",
    )


def test_configuration_parameters_of_a_version(api: Api, trove) -> None:
    base, headers = trove
    params = api.client.get(
        f"{base}/datastores/postgresql/versions/15/parameters", headers=headers
    ).json()["configuration-parameters"]
    max_conn = next(p for p in params if p["name"] == "max_connections")
    assert max_conn["type"] == "integer" and max_conn["restart_required"] is True
    assert isinstance(max_conn["min"], int)
    vid = max_conn["datastore_version_id"]
    one = api.client.get(
        f"{base}/datastores/versions/{vid}/parameters/max_connections", headers=headers
    )
    assert one.json() == max_conn
    _fault(
        api.client.get(
            f"{base}/datastores/postgresql/versions/15/parameters/nope", headers=headers
        ),
        404,
        "itemNotFound",
    )


# -- instances -----------------------------------------------------------------------------------
def test_create_answers_200_build_and_is_readable_at_once(api: Api, trove) -> None:
    base, headers = trove
    made = _instance(api, base, headers)
    assert made["status"] == "BUILD" and made["operating_status"] == ""
    assert made["datastore"]["type"] == "postgresql" and made["datastore"]["version"] == "15"
    assert made["volume"]["size"] == 1 and made["compute_type"] == "container"
    assert isinstance(made["flavor"]["id"], str) and made["region"] and "access" in made
    assert STAMP.match(made["created"]) and STAMP.match(made["updated"])
    assert made["ip"] == ["127.0.0.1"] and "fault" not in made
    for ident in (made["id"], "pg1"):
        shown = api.client.get(f"{base}/instances/{ident}", headers=headers).json()["instance"]
        assert shown["id"] == made["id"] and shown["status"] == "BUILD"
    # the platform's own service made it: with its database and user
    platform = api.client.get(f"/v1/db/instances/{made['id']}", headers=api.other).json()
    assert platform["flavor"] == "container.small" and platform["size_gb"] == 1
    flavor = api.client.get(f"{base}/flavors/{made['flavor']['id']}", headers=headers).json()
    assert flavor["flavor"]["name"] == "container.small"


def test_openstacksdk_shapes_are_accepted(api: Api, trove) -> None:
    base, headers = trove
    flavors = api.client.get(f"{base}/flavors", headers=headers).json()["flavors"]
    str_id = next(f["str_id"] for f in flavors if f["name"] == "container.small")
    body = {"instance": {"name": "sdk1", "flavor": str_id, "datastore": PG}}
    got = api.client.post(f"{base}/instances", json=body, headers=headers)
    assert got.status_code == 200, got.text
    assert got.json()["instance"]["flavor"]["id"] == str_id


def test_list_detail_and_pages(api: Api, trove) -> None:
    base, headers = trove
    ids = [_instance(api, base, headers, name)["id"] for name in ("pg1", "pg2", "pg3")]
    listed = api.client.get(f"{base}/instances", headers=headers).json()
    assert [i["id"] for i in listed["instances"]] == ids and "links" not in listed
    assert "created" not in listed["instances"][0]
    detail = api.client.get(f"{base}/instances/detail", headers=headers).json()
    assert all(STAMP.match(i["created"]) for i in detail["instances"])
    first = api.client.get(f"{base}/instances?limit=2", headers=headers).json()
    assert [i["id"] for i in first["instances"]] == ids[:2]
    [link] = first["links"]
    assert link["rel"] == "next" and link["href"].endswith(f"marker={ids[1]}")
    rest = api.client.get(link["href"], headers=headers).json()
    assert [i["id"] for i in rest["instances"]] == ids[2:] and "links" not in rest
    _fault(api.client.get(f"{base}/instances?limit=x", headers=headers), 400, "badRequest")


def test_delete_answers_202_and_reads_shutdown(api: Api, trove) -> None:
    base, headers = trove
    made = _instance(api, base, headers)
    gone = api.client.delete(f"{base}/instances/{made['id']}", headers=headers)
    assert gone.status_code == 202 and gone.content == b""
    shown = api.client.get(f"{base}/instances/{made['id']}", headers=headers).json()
    assert shown["instance"]["status"] == "SHUTDOWN"


def test_actions_map_onto_the_services_refusals(api: Api, trove) -> None:
    base, headers = trove
    made = _instance(api, base, headers)
    action = f"{base}/instances/{made['id']}/action"
    before = api.counts()
    # a database that is still building refuses each (the service's own checks)
    for body in (
        {"restart": {}},
        {"restart": None},
        {"resize": {"volume": {"size": 2}}},
        {"resize": {"volume": 2}},
    ):
        _fault(api.client.post(action, json=body, headers=headers), 409, "conflictingRequest")
    _fault(
        api.client.post(action, json={"promote_to_replica_source": {}}, headers=headers),
        409,
        "conflictingRequest",
        "is_primary",
    )
    _fault(
        api.client.post(action, json={"eject_replica_source": {}}, headers=headers),
        409,
        "conflictingRequest",
        "no_replica",
    )
    _fault(api.client.post(action, json={"fly": {}}, headers=headers), 400, "badRequest")
    _fault(
        api.client.post(action, json={"restart": {}, "resize": {}}, headers=headers),
        400,
        "badRequest",
    )
    _fault(
        api.client.post(action, json={"resize": {"flavorRef": "no.such"}}, headers=headers),
        404,
        "itemNotFound",
    )
    assert api.counts() == before


def test_update_refuses_a_rename_and_an_unknown_configuration(api: Api, trove) -> None:
    base, headers = trove
    made = _instance(api, base, headers)
    path = f"{base}/instances/{made['id']}"
    renamed = api.client.patch(path, json={"instance": {"name": "other"}}, headers=headers)
    _fault(renamed, 400, "badRequest", "rename_not_supported")
    attach = api.client.put(path, json={"instance": {"configuration": "nope"}}, headers=headers)
    _fault(attach, 404, "itemNotFound")
    same = api.client.patch(path, json={"instance": {"name": "pg1"}}, headers=headers)
    assert same.status_code == 202


def test_databases_and_users_of_a_building_instance_are_a_conflict(api: Api, trove) -> None:
    base, headers = trove
    made = _instance(api, base, headers)
    inst = f"{base}/instances/{made['id']}"
    _fault(api.client.get(f"{inst}/databases", headers=headers), 409, "conflictingRequest")
    _fault(api.client.get(f"{inst}/users/alice%40%25", headers=headers), 409, "conflictingRequest")
    bad = {"databases": [{"name": "x; drop"}]}
    _fault(api.client.post(f"{inst}/databases", json=bad, headers=headers), 400, "badRequest")
    _fault(api.client.post(f"{inst}/users", json={"users": []}, headers=headers), 400, "badRequest")
    _fault(api.client.get(f"{base}/instances/nope/users", headers=headers), 404, "itemNotFound")


def test_a_password_change_names_only_the_password(api: Api, trove) -> None:
    """trove-tempest-plugin's ``PUT …/users/{user} {"user": {"password": …}}`` (no name)
    reaches the service (which refuses a BUILD instance: 409), not a 400."""
    base, headers = trove
    inst = f"{base}/instances/{_instance(api, base, headers)['id']}"
    for body in ({"user": {"password": "new_password"}}, {"user": {"name": "alice"}}):
        got = api.client.put(f"{inst}/users/alice", json=body, headers=headers)
        _fault(got, 409, "conflictingRequest", "invalid_state")


def test_openstacksdk_user_and_database_shapes_are_read(api: Api, trove) -> None:
    """openstacksdk's bodies get as far as the service (which refuses a BUILD instance with
    409); a body of no known shape is a 400."""
    base, headers = trove
    inst = f"{base}/instances/{_instance(api, base, headers)['id']}"
    sdk_user = {"users": {"name": "bob", "password": "Bob-pass-123", "databases": []}}
    for path, body in (
        (f"{inst}/users/bob", sdk_user),
        (f"{inst}/users/bob", {"user": {"password": "Bob-pass-123"}}),
        (f"{inst}/users", {"users": [{"name": "bob", "password": "Bob-pass-123"}]}),
        (f"{inst}/databases", {"database": {"name": "reports"}}),
        (f"{inst}/databases", {"databases": [{"name": "reports"}]}),
    ):
        got = api.client.post(path, json=body, headers=headers)
        _fault(got, 409, "conflictingRequest", "invalid_state")
    _fault(
        api.client.post(f"{inst}/users/bob", json={"users": "bob"}, headers=headers),
        400,
        "badRequest",
    )
    no_password = {"users": [{"name": "bob"}]}
    _fault(api.client.post(f"{inst}/users", json=no_password, headers=headers), 400, "badRequest")


def test_replica_requests_are_checked_before_anything_is_made(api: Api, trove) -> None:
    base, headers = trove
    made = _instance(api, base, headers)
    before = api.counts()
    unknown = {"instance": {"name": "r1", "replica_of": "nope"}}
    _fault(api.client.post(f"{base}/instances", json=unknown, headers=headers), 404, "itemNotFound")
    with_users = {
        "instance": {
            "name": "r1",
            "replica_of": made["id"],
            "users": [{"name": "bob", "password": "Bob-pass-123"}],
        }
    }
    _fault(
        api.client.post(f"{base}/instances", json=with_users, headers=headers), 400, "badRequest"
    )
    detach = {"instance": {"replica_of": None}}
    got = api.client.patch(f"{base}/instances/{made['id']}", json=detach, headers=headers)
    _fault(got, 409, "conflictingRequest", "not_a_replica")
    assert api.counts() == before


def test_put_replica_of_empty_detaches_a_replica_and_keeps_the_configuration(
    api: Api, trove
) -> None:
    """trove-tempest-plugin detaches with ``PUT {"instance": {"replica_of": ""}}``: on an
    instance that is no replica that is 409 ``not_a_replica`` (not a configuration detach,
    which a PUT without ``configuration`` otherwise is); PATCH takes ``""`` as null too."""
    base, headers = trove
    made = _instance(api, base, headers)
    path = f"{base}/instances/{made['id']}"
    before = api.counts()
    for method in ("PUT", "PATCH"):
        for value in ("", None):
            body = {"instance": {"replica_of": value}}
            got = api.client.request(method, path, json=body, headers=headers)
            _fault(got, 409, "conflictingRequest", "not_a_replica")
    assert api.counts() == before


def _member(name: str, role: str) -> DbMemberOut:
    return DbMemberOut.model_construct(
        name=name, role=role, flavor="container.small", compute_type="container",
        state="ACTIVE", status_message="", endpoint=None,
    )  # fmt: skip


def _group(*members: DbMemberOut) -> DbInstanceOut:
    return DbInstanceOut.model_construct(
        id="0f3a", name="pg1", status="ACTIVE", restart_required=False, health="HEALTHY",
        flavor="container.small", datastore="postgresql", version="15", size_gb=1,
        project_id="p", compute_type="container", storage=None, endpoint=None,
        members=list(members), configuration=None,
    )  # fmt: skip


REQUEST = Request(
    {"type": "http", "scheme": "http", "server": ("onep", 80), "path": "/", "root_path": "",
     "headers": [], "query_string": b"", "path_params": {"project_id": "p"}}
)  # fmt: skip


@pytest.mark.parametrize(
    ("members", "source", "replica"),
    [
        # before a switchover: the database instance's id is its primary
        ([("pg1", "primary"), ("pg1-r1", "replica")], ("0f3a", "pg1"), ("pg1-r1", "pg1-r1")),
        # after promote_to_replica_source on pg1-r1: it is the source, and the id the
        # client holds for pg1 names its replica (as Trove's ids do)
        ([("pg1-r1", "primary"), ("pg1", "replica")], ("pg1-r1", "pg1-r1"), ("0f3a", "pg1")),
        # after a resize to another flavor (a move): the new primary keeps the instance's id
        ([("pg1-m1", "primary"), ("pg1-r1", "replica")], ("0f3a", "pg1"), ("pg1-r1", "pg1-r1")),
    ],
)
def test_each_member_keeps_its_trove_id_through_a_switchover(
    members: list[tuple[str, str]], source: tuple[str, str], replica: tuple[str, str]
) -> None:
    db = _group(*(_member(n, r) for n, r in members))
    for ident in source:
        found = find(ident, [db])
        assert found.replica is None
        shown = instances._view(REQUEST, found, [], set(), detail=False)
        assert (shown["id"], shown["name"]) == source and "replica_of" not in shown
        assert [(r["id"], r["name"]) for r in shown["replicas"]] == [replica]
    for ident in replica:
        found = find(ident, [db])
        assert found.replica is not None
        shown = instances._view(REQUEST, found, [], set(), detail=False)
        assert (shown["id"], shown["name"]) == replica and "replicas" not in shown
        assert (shown["replica_of"]["id"], shown["replica_of"]["name"]) == source
    with pytest.raises(NotFound):
        find("pg1-r2", [db])


def test_a_replica_reads_promote_while_its_group_switches_over() -> None:
    db = _group(_member("pg1", "primary"), _member("pg1-r1", "replica"))
    switching = db.model_copy(update={"status": "SWITCHOVER"})
    for ident in ("0f3a", "pg1-r1"):
        shown = instances._view(REQUEST, find(ident, [switching]), [], set(), detail=False)
        assert (shown["status"], shown["operating_status"]) == ("PROMOTE", "")
    shown = instances._view(REQUEST, find("pg1-r1", [db]), [], set(), detail=False)
    assert (shown["status"], shown["operating_status"]) == ("ACTIVE", "HEALTHY")


def _state(m: DbMemberOut, state: str) -> DbMemberOut:
    return m.model_copy(update={"state": state})


@pytest.mark.parametrize(
    ("status", "former_state"),
    [
        ("ACTIVE", "DELETING"),  # a move has ended; its former primary is being deleted
        ("RESIZE", "DELETING"),  # retired, the move not yet finished
        ("FAILOVER", "ERROR"),  # fenced by an eject, not yet discarded
    ],
)
def test_a_retiring_former_primary_hands_the_id_to_the_new_one(
    status: str, former_state: str
) -> None:
    """A move's or an eject's former primary (a replica named as the database instance, on
    its way out) is no Trove instance: the instance's id and name read the new primary at
    once (as Trove's resize and eject keep them), never SHUTDOWN or ERROR."""
    former = _state(_member("pg1", "replica"), former_state)
    db = _group(_member("pg1-m1", "primary"), former).model_copy(update={"status": status})
    word = {"ACTIVE": "ACTIVE", "RESIZE": "RESIZE", "FAILOVER": "EJECT"}[status]
    for ident in ("0f3a", "pg1"):
        found = find(ident, [db])
        assert found.member is not None and found.member.name == "pg1-m1"
        shown = instances._view(REQUEST, found, [], set(), detail=False)
        assert (shown["id"], shown["name"], shown["status"]) == ("0f3a", "pg1", word)
        assert "replicas" not in shown and "replica_of" not in shown
    with pytest.raises(NotFound):
        find("pg1-m1", [db])
    # a deleted database keeps its members as they are: its id reads SHUTDOWN
    gone = db.model_copy(update={"status": "DELETING"})
    assert find("0f3a", [gone]).member == former


def test_a_replica_reads_resize_while_its_group_resizes() -> None:
    """A move switches the group over: the member named as the database instance is then a
    replica, and reads RESIZE (not ACTIVE) until the move ends."""
    db = _group(_member("pg1-m1", "primary"), _member("pg1", "replica"))
    moving = db.model_copy(update={"status": "RESIZE"})
    shown = instances._view(REQUEST, find("0f3a", [moving]), [], set(), detail=False)
    assert (shown["status"], shown["replica_of"]["name"]) == ("RESIZE", "pg1-m1")


def test_user_path_segments() -> None:
    assert user_name("bob") == "bob"
    assert user_name("bob@%") == "bob"
    assert user_name("bob@") == "bob"
    with pytest.raises(NotFound):
        user_name("bob@10.0.0.%")


@pytest.mark.parametrize(
    ("status", "restart", "backing_up", "word"),
    [
        ("BUILD", False, False, "BUILD"),
        ("ACTIVE", False, False, "ACTIVE"),
        ("ACTIVE", True, False, "RESTART_REQUIRED"),
        ("ACTIVE", False, True, "BACKUP"),
        ("RESTARTING", False, False, "REBOOT"),
        ("RESIZE", False, False, "RESIZE"),
        ("SWITCHOVER", False, False, "PROMOTE"),
        ("FAILOVER", False, False, "EJECT"),
        ("DELETING", False, False, "SHUTDOWN"),
        ("DETACHING", False, False, "DETACH"),
        ("ERROR", False, False, "ERROR"),
        ("SOMETHING", False, False, "UNKNOWN"),
    ],
)
def test_status_words(status: str, restart: bool, backing_up: bool, word: str) -> None:
    db = DbInstanceOut.model_construct(status=status, restart_required=restart)
    assert views.status_word(db, backing_up) == word


def test_timestamps_have_no_zone_and_no_fraction() -> None:
    import datetime as dt

    moment = dt.datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert views.timestamp(moment) == "2026-01-02T01:04:05"


# -- backups and configurations ------------------------------------------------------------------
def test_backups(api: Api, trove) -> None:
    base, headers = trove
    assert api.client.get(f"{base}/backups", headers=headers).json() == {"backups": []}
    made = _instance(api, base, headers)
    body = {"backup": {"name": "b1", "instance": made["id"], "description": None}}
    # the platform backs up an ACTIVE database only
    _fault(
        api.client.post(f"{base}/backups", json=body, headers=headers), 409, "conflictingRequest"
    )
    got = api.client.get(f"{base}/instances/{made['id']}/backups", headers=headers)
    assert got.json() == {"backups": []}
    _fault(api.client.get(f"{base}/backups/nope", headers=headers), 404, "itemNotFound")
    _fault(api.client.delete(f"{base}/backups/nope", headers=headers), 404, "itemNotFound")


def test_configurations(api: Api, trove) -> None:
    base, headers = trove
    body = {
        "configuration": {
            "name": "tuned",
            "description": "more connections",
            "values": {"max_connections": 150},
            "datastore": PG,
        }
    }
    made = api.client.post(f"{base}/configurations", json=body, headers=headers)
    assert made.status_code == 200, made.text
    group = made.json()["configuration"]
    assert group["values"] == {"max_connections": 150}
    assert group["datastore_name"] == "postgresql" and group["datastore_version_name"] == "15"
    assert STAMP.match(group["created"])
    for ident in (group["id"], "tuned"):
        shown = api.client.get(f"{base}/configurations/{ident}", headers=headers).json()
        assert shown["configuration"]["id"] == group["id"]
    listed = api.client.get(f"{base}/configurations", headers=headers).json()["configurations"]
    assert [c["name"] for c in listed] == ["tuned"] and "values" not in listed[0]
    patch = {"configuration": {"values": {"work_mem": "8MB"}}}
    merged = api.client.patch(f"{base}/configurations/tuned", json=patch, headers=headers)
    assert merged.status_code == 200 and merged.content == b""  # Trove's edit: 200, no body
    shown = api.client.get(f"{base}/configurations/tuned", headers=headers).json()
    assert shown["configuration"]["values"] == {"max_connections": 150, "work_mem": "8MB"}
    put = {"configuration": {"values": {"work_mem": "16MB"}}}
    assert (
        api.client.put(f"{base}/configurations/tuned", json=put, headers=headers).status_code == 202
    )
    shown = api.client.get(f"{base}/configurations/tuned", headers=headers).json()
    assert shown["configuration"]["values"] == {"work_mem": "16MB"}
    wrong = {"configuration": {"values": {"max_connections": -5}}}
    _fault(
        api.client.patch(f"{base}/configurations/tuned", json=wrong, headers=headers),
        400,
        "badRequest",
    )
    inst = api.client.get(f"{base}/configurations/tuned/instances", headers=headers)
    assert inst.json() == {"instances": []}
    assert api.client.delete(f"{base}/configurations/tuned", headers=headers).status_code == 202
    _fault(api.client.get(f"{base}/configurations/tuned", headers=headers), 404, "itemNotFound")


def test_create_with_a_configuration_lists_it(api: Api, trove) -> None:
    base, headers = trove
    body = {"configuration": {"name": "tuned", "values": {"work_mem": "8MB"}, "datastore": PG}}
    group = api.client.post(f"{base}/configurations", json=body, headers=headers).json()
    made = _instance(api, base, headers, configuration=group["configuration"]["id"])
    shown = api.client.get(f"{base}/instances/{made['id']}", headers=headers).json()["instance"]
    assert shown["configuration"]["name"] == "tuned"
    attached = api.client.get(f"{base}/configurations/tuned/instances", headers=headers).json()
    assert [i["id"] for i in attached["instances"]] == [made["id"]]
    values = api.client.get(f"{base}/instances/{made['id']}/configuration", headers=headers)
    assert values.json() == {"instance": {"configuration": {"work_mem": "8MB"}}}


# -- the real troveclient against a real server --------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(api: Api) -> Iterator[str]:
    """The same app behind a real uvicorn on 127.0.0.1."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(api.client.app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _troveclient(endpoint: str, token: str):  # type: ignore[no-untyped-def]
    from keystoneauth1 import session
    from keystoneauth1.token_endpoint import Token
    from troveclient.v1 import client

    return client.Client(session=session.Session(auth=Token(endpoint, token)))


def test_the_real_troveclient_reads_flavors_datastores_and_faults(api: Api, served: str) -> None:
    from troveclient import exceptions

    token = api.other["Authorization"].removeprefix("Bearer ")
    trove = _troveclient(f"{served}/v1.0/{_pid(api, api.other)}", token)
    flavors = {f.name: f for f in trove.flavors.list()}
    small = flavors["container.small"]
    assert small.ram == 512 and small.vcpus == 1 and small.id == small.str_id  # id from str_id
    assert trove.flavors.get("container.small").id == small.id
    stores = {d.name: d for d in trove.datastores.list()}
    assert "postgresql" in stores
    version = trove.datastore_versions.get("postgresql", "15")
    assert version.name == "15"
    params = trove.configuration_parameters.parameters("postgresql", "15")
    assert "max_connections" in {p.name for p in params}
    assert trove.instances.list() == []
    with pytest.raises(exceptions.NotFound):
        trove.instances.get("nope")
    with pytest.raises(exceptions.BadRequest):
        trove.instances.create("Bad Name", flavor_id=small.id)
    foreign = _troveclient(f"{served}/v1.0/{_pid(api, api.admin)}", token)
    with pytest.raises(exceptions.Forbidden):
        foreign.flavors.list()
    nobody = _troveclient(f"{served}/v1.0/{_pid(api, api.other)}", "onep_not-a-token")
    with pytest.raises(exceptions.Unauthorized):
        nobody.flavors.list()


def test_the_openstack_cli_creates_shows_and_lists(api: Api, served: str) -> None:
    """``openstack database instance create|show|list`` (no worker runs: it stays BUILD)."""
    token = api.other["Authorization"].removeprefix("Bearer ")
    endpoint = f"{served}/v1.0/{_pid(api, api.other)}"
    cli = [str(Path(sys.executable).with_name("openstack")), "--os-auth-type", "admin_token",
           "--os-token", token, "--os-endpoint", endpoint]  # fmt: skip

    def openstack(*args: str) -> Any:
        out = subprocess.run([*cli, *args, "-f", "json"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    made = openstack(
        "database", "instance", "create", "pg1", "--flavor", "container.small", "--size", "1",
        "--datastore", "postgresql", "--datastore-version", "15",
        "--databases", "appdb", "--users", "alice:S3cret-pass-1",
    )  # fmt: skip
    assert made["name"] == "pg1" and made["status"] == "BUILD", made
    shown = openstack("database", "instance", "show", "pg1")
    assert shown["id"] == made["id"] and shown["datastore_version"] == "15"
    assert [i["Name"] for i in openstack("database", "instance", "list")] == ["pg1"]
    flavors = openstack("database", "flavor", "list")
    assert "container.small" in {f["Name"] for f in flavors}


# -- on an ACTIVE instance (its status set as the worker would; no worker runs) ------------------
def _activate(api: Api, ident: str) -> None:
    from oneplatform.store.models import DbInstance

    with api.store.session() as s:
        db = s.get_one(DbInstance, ident)
        db.status, db.health = "ACTIVE", "HEALTHY"


def test_a_backup_is_202_and_the_instance_reads_backup(api: Api, trove) -> None:
    base, headers = trove
    made = _instance(api, base, headers)
    _activate(api, made["id"])
    shown = api.client.get(f"{base}/instances/pg1", headers=headers).json()["instance"]
    assert (shown["status"], shown["operating_status"]) == ("ACTIVE", "HEALTHY")
    body = {"backup": {"name": "b1", "instance": "pg1", "description": "first"}}
    got = api.client.post(f"{base}/backups", json=body, headers=headers)
    assert got.status_code == 202, got.text
    backup = got.json()["backup"]
    assert backup["name"] == "b1" and backup["instance_id"] == made["id"]
    assert backup["status"] == "NEW" and STAMP.match(backup["created"])
    assert backup["datastore"]["type"] == "postgresql" and backup["type"] == "full"
    shown = api.client.get(f"{base}/instances/pg1", headers=headers).json()["instance"]
    assert shown["status"] == "BACKUP"
    for path in (f"{base}/backups", f"{base}/instances/pg1/backups"):
        listed = api.client.get(path, headers=headers).json()["backups"]
        assert [b["id"] for b in listed] == [backup["id"]]
    by_instance = api.client.get(f"{base}/backups?instance_id={made['id']}", headers=headers)
    assert [b["id"] for b in by_instance.json()["backups"]] == [backup["id"]]
    for ident in (backup["id"], "b1"):
        one = api.client.get(f"{base}/backups/{ident}", headers=headers).json()["backup"]
        assert one["id"] == backup["id"]


def test_a_value_waiting_for_a_restart_reads_restart_required(api: Api, trove) -> None:
    from oneplatform.store.models import DbInstance

    base, headers = trove
    made = _instance(api, base, headers)
    _activate(api, made["id"])
    with api.store.session() as s:
        s.get_one(DbInstance, made["id"]).restart_required = True
    shown = api.client.get(f"{base}/instances/pg1", headers=headers).json()["instance"]
    assert (shown["status"], shown["operating_status"]) == ("RESTART_REQUIRED", "HEALTHY")


def test_openstacksdk_discovers_the_endpoint_and_drives_instances(api: Api, served: str) -> None:
    """openstacksdk with the facade as its endpoint: version discovery, then its own request
    shapes (``flavor`` for ``flavorRef``); no worker runs, so the instance stays BUILD."""
    import openstack

    endpoint = f"{served}/v1.0/{_pid(api, api.other)}"
    token = api.other["Authorization"].removeprefix("Bearer ")
    conn = openstack.connection.Connection(
        auth_type="admin_token",
        auth={"endpoint": endpoint, "token": token},
        database_endpoint_override=endpoint,
    )
    assert "container.small" in [f.name for f in conn.database.flavors()]
    assert conn.database.find_flavor("container.small").name == "container.small"
    made = conn.database.create_instance(
        name="sdk1",
        flavor="container.small",
        volume={"size": 1},
        datastore={"type": "postgresql", "version": "15"},
    )
    assert made.status == "BUILD"
    assert conn.database.get_instance(made.id).name == "sdk1"
    assert conn.database.find_instance("sdk1").id == made.id
    assert [i.name for i in conn.database.instances()] == ["sdk1"]
    conn.database.delete_instance(made.id)
    assert conn.database.get_instance(made.id).status == "SHUTDOWN"


def test_the_openstack_cli_and_openstacksdk_create_and_list_backups(api: Api, served: str) -> None:
    """``openstack database backup create|list`` (by instance name too) and openstacksdk's
    proxy GET of /backups (it has no backup resource), as tests/e2e/test_trove_cli.py sends
    them; a restore of a backup not yet COMPLETED is a 409 the CLI reports."""
    import openstack

    token = api.other["Authorization"].removeprefix("Bearer ")
    endpoint = f"{served}/v1.0/{_pid(api, api.other)}"
    base, headers = f"/v1.0/{_pid(api, api.other)}", _token(api.other)
    made = _instance(api, base, headers)
    _activate(api, made["id"])
    cli = [str(Path(sys.executable).with_name("openstack")), "--os-auth-type", "admin_token",
           "--os-token", token, "--os-endpoint", endpoint]  # fmt: skip

    def openstack_cli(*args: str, ok: bool = True) -> Any:
        out = subprocess.run([*cli, *args, "-f", "json"], capture_output=True, text=True)
        assert (out.returncode == 0) == ok, out.stderr
        return json.loads(out.stdout) if ok else out.stderr

    backup = openstack_cli("database", "backup", "create", "pg1-full", "--instance", "pg1")
    assert backup["name"] == "pg1-full" and backup["instance_id"] == made["id"], backup
    assert backup["status"] == "NEW"
    for args in ((), ("--instance", "pg1")):
        listed = openstack_cli("database", "backup", "list", *args)
        assert [(b["Name"], b["Status"], b["Instance ID"]) for b in listed] == [
            ("pg1-full", "NEW", made["id"])
        ]
    restore = openstack_cli(
        "database", "instance", "create", "pg2", "--flavor", "container.small", "--size", "1",
        "--datastore", "postgresql", "--datastore-version", "15", "--backup", backup["id"],
        ok=False,
    )  # fmt: skip
    assert "backup 'pg1-full' is NEW, not COMPLETED (HTTP 409)" in restore, restore
    conn = openstack.connection.Connection(
        auth_type="admin_token",
        auth={"endpoint": endpoint, "token": token},
        database_endpoint_override=endpoint,
    )
    got = conn.database.get("/backups")
    assert got.status_code == 200
    assert [b["name"] for b in got.json()["backups"]] == ["pg1-full"]


# -- limits and quotas, root, logs, what has no mapping ------------------------------------------
def _limits(api: Api, base: str, headers: dict[str, str]) -> dict[str, Any]:
    got = api.client.get(f"{base}/limits", headers=headers)
    assert got.status_code == 200, got.text
    [absolute] = got.json()["limits"]
    return dict(absolute)


def test_limits_and_quotas_are_the_platforms_quotas(api: Api, trove) -> None:
    base, headers = trove
    pid, admin_base = _pid(api, api.other), f"/v1.0/{_pid(api, api.admin)}"
    unlimited = {"verb": "ABSOLUTE", "max_instances": -1, "max_volumes": -1,
                 "max_backups": -1, "max_ram": -1, "max_vcpus": -1}  # fmt: skip
    assert _limits(api, base, headers) == unlimited
    # an admin sets the project's quotas by id (or name), in Trove's names
    body = {"quotas": {"instances": 1, "volumes": 30, "ram": None, "backups": -1}}
    put = api.client.put(f"{admin_base}/mgmt/quotas/{pid}", json=body, headers=_token(api.admin))
    assert put.status_code == 200, put.text
    assert put.json() == {"quotas": {"instances": 1, "volumes": 30, "backups": -1}}
    own = api.client.get("/v1/quota", headers=api.other).json()["quota"]
    assert own["databases"]["limit"] == 1 and own["storage_gb"]["limit"] == 30
    assert own["backups"]["limit"] is None and own["ram_mb"]["limit"] is None
    assert _limits(api, base, headers) == {**unlimited, "max_instances": 1, "max_volumes": 30}

    _instance(api, base, headers)
    shown = api.client.get(f"{base}/mgmt/quotas/{pid}", headers=headers)
    rows = {q["resource"]: q for q in shown.json()["quotas"]}
    assert rows["instances"] == {"resource": "instances", "in_use": 1, "reserved": 0, "limit": 1}
    assert rows["volumes"]["limit"] == 30 and rows["volumes"]["in_use"] >= 1
    assert rows["ram"]["limit"] == -1 and rows["ram"]["in_use"] == 512
    by_name = api.client.get(f"{base}/mgmt/quotas/other", headers=headers).json()
    assert by_name == shown.json()
    second = {"instance": {"name": "pg2", "flavorRef": "container.small", "datastore": PG}}
    got = api.client.post(f"{base}/instances", json=second, headers=headers)
    _fault(got, 413, "overLimit", "quota_exceeded")

    before = api.counts()
    member_put = api.client.put(f"{base}/mgmt/quotas/{pid}", json=body, headers=headers)
    _fault(member_put, 403, "forbidden", "admin_required")
    theirs = api.client.get(f"{base}/mgmt/quotas/{_pid(api, api.admin)}", headers=headers)
    _fault(theirs, 404, "itemNotFound", "project_not_found")  # another project is not there
    admin = _token(api.admin)
    for bad in ({"quotas": {"cores": 1}}, {"quotas": {"instances": -2}}, {"quotas": {}}, {}):
        got = api.client.put(f"{admin_base}/mgmt/quotas/{pid}", json=bad, headers=admin)
        _fault(got, 400, "badRequest", "invalid_input")
    assert api.counts() == before
    assert api.client.get("/v1/quota", headers=api.other).json()["quota"]["databases"]["limit"] == 1


def test_root_is_the_databases_admin_user(api: Api, trove, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``POST …/root`` sets the database admin user's password (given or generated) through
    the service that ``onep db reset-password`` uses and answers the user; it always reads
    enabled; disabling is 501. (The engine's side is tests/e2e/test_trove_cli.py's.)"""
    from oneplatform.api.trove import root
    from oneplatform.schemas.databases import Credentials

    base, headers = trove
    made = _instance(api, base, headers)
    path = f"{base}/instances/{made['id']}/root"
    # still building: the service's own refusal, nothing changed
    _fault(api.client.post(path, headers=headers), 409, "conflictingRequest", "invalid_state")
    asked: list[tuple[str, str | None]] = []

    def reset(store, settings, caller, ident, password=None):  # type: ignore[no-untyped-def]
        asked.append((ident, password))
        return Credentials(username="pgadmin", password=password or "generated-pw-1")

    monkeypatch.setattr(root.service, "reset_admin_password", reset)
    got = api.client.post(path, headers=headers)
    assert got.status_code == 200, got.text
    assert got.json() == {"user": {"name": "pgadmin", "password": "generated-pw-1"}}
    given = api.client.post(path, json={"password": "Chosen-pass-9"}, headers=headers)
    assert given.json()["user"]["password"] == "Chosen-pass-9"
    short = api.client.post(path, json={"password": "short"}, headers=headers)
    _fault(short, 400, "badRequest", "invalid_input")
    assert asked == [(made["id"], None), (made["id"], "Chosen-pass-9")]
    shown = api.client.get(path, headers=headers)
    assert shown.status_code == 200 and shown.json() == {"rootEnabled": True}
    off = api.client.delete(path, headers=headers)
    _fault(off, 501, "notImplemented", "root_disable_not_supported")
    _fault(api.client.get(f"{base}/instances/nope/root", headers=headers), 404, "itemNotFound")


def test_the_engine_log_is_trove_s_one_sys_log(api: Api, trove, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from oneplatform.api.trove import logs
    from oneplatform.schemas.databases import DbLogOut

    base, headers = trove
    made = _instance(api, base, headers)
    path = f"{base}/instances/{made['id']}/log"
    listed = api.client.get(path, headers=headers)
    assert listed.status_code == 200, listed.text
    # no agent answers a building instance
    assert listed.json() == {"logs": [{
        "name": "engine", "type": "SYS", "status": "Unavailable", "published": 0, "pending": 0,
        "container": None, "prefix": None, "metafile": None,
    }]}  # fmt: skip
    monkeypatch.setattr(
        logs.events, "db_logs",
        lambda *a, **k: DbLogOut(member="pg1", lines=["ready", "to accept"], next=3),
    )  # fmt: skip
    shown = api.client.post(path, json={"name": "engine"}, headers=headers)
    assert shown.status_code == 200, shown.text
    assert (shown.json()["log"]["status"], shown.json()["log"]["pending"]) == ("Ready", 16)
    for action in ("enable", "disable"):
        got = api.client.post(path, json={"name": "engine", action: 1}, headers=headers)
        _fault(got, 400, "badRequest", "log_always_on")
    for action in ("publish", "discard"):
        got = api.client.post(path, json={"name": "engine", action: 1}, headers=headers)
        _fault(got, 501, "notImplemented", "log_publish_not_supported")
    got = api.client.post(path, json={"name": "general"}, headers=headers)
    _fault(got, 404, "itemNotFound", "log_not_found")
    _fault(api.client.post(path, json={}, headers=headers), 400, "badRequest", "invalid_input")


@pytest.mark.parametrize(
    ("method", "tail", "code"),
    [
        ("GET", "/clusters", "clusters_not_supported"),
        ("POST", "/clusters", "clusters_not_supported"),
        ("DELETE", "/clusters/c1", "clusters_not_supported"),
        ("GET", "/modules", "modules_not_supported"),
        ("PUT", "/modules/m1", "modules_not_supported"),
        ("GET", "/instances/pg1/modules", "modules_not_supported"),
    ],
)
def test_clusters_and_modules_are_not_implemented(
    api: Api, trove, method: str, tail: str, code: str
) -> None:
    base, headers = trove
    before = api.counts()
    got = api.client.request(method, f"{base}{tail}", json={}, headers=headers)
    assert "not supported" in _fault(got, 501, "notImplemented", code)["message"]
    assert api.counts() == before


def test_the_real_troveclient_reads_limits_quotas_root_and_logs(api: Api, served: str) -> None:
    """troveclient's own managers (what ``openstack database limit list``, ``quota show|
    update``, ``root show|enable|disable``, ``log list|show`` and ``cluster list`` call)."""
    from troveclient import exceptions

    pid = _pid(api, api.other)
    token = api.other["Authorization"].removeprefix("Bearer ")
    trove = _troveclient(f"{served}/v1.0/{pid}", token)
    admin_token = api.admin["Authorization"].removeprefix("Bearer ")
    admin = _troveclient(f"{served}/v1.0/{_pid(api, api.admin)}", admin_token)
    assert admin.quota.update(pid, {"instances": 3}) == {"instances": 3}
    [absolute] = trove.limits.list()
    assert (absolute.verb, absolute.max_instances, absolute.max_backups) == ("ABSOLUTE", 3, -1)
    quotas = {q.resource: q for q in trove.quota.show(pid)}
    assert (quotas["instances"].limit, quotas["instances"].in_use) == (3, 0)
    with pytest.raises(exceptions.Forbidden):
        trove.quota.update(pid, {"instances": 9})

    made = trove.instances.create(
        "pg1", "container.small", volume={"size": 1}, datastore="postgresql",
        datastore_version="15",
    )  # fmt: skip
    assert trove.root.is_root_enabled(made.id).rootEnabled is True
    with pytest.raises(exceptions.Conflict):  # still building
        trove.root.create_instance_root(made.id)
    with pytest.raises(exceptions.HttpNotImplemented):
        trove.root.delete(made.id)
    [log] = trove.instances.log_list(made.id)
    assert (log.name, log.type, log.status) == ("engine", "SYS", "Unavailable")
    assert trove.instances.log_show(made.id, "engine").name == "engine"
    with pytest.raises(exceptions.HttpNotImplemented):
        trove.instances.log_action(made.id, "engine", publish=True)
    with pytest.raises(exceptions.HttpNotImplemented):
        trove.clusters.list()
    with pytest.raises(exceptions.HttpNotImplemented):
        trove.modules.list()


def test_the_former_primary_named_as_the_database_cannot_be_detached() -> None:
    """trove-tempest-plugin detaches the former primary after a promotion; here that server
    bears the database instance's name and id, which the group keeps: a clear 409 before
    anything is asked of the service."""
    from oneplatform.errors import Conflict

    db = _group(_member("pg1-r1", "primary"), _member("pg1", "replica"))
    with pytest.raises(Conflict) as refused:
        instances._detach(None, None, find("0f3a", [db]))  # type: ignore[arg-type]
    assert refused.value.code == "detach_of_named_server"
    with pytest.raises(Conflict) as primary:
        instances._detach(None, None, find("pg1-r1", [db]))  # type: ignore[arg-type]
    assert primary.value.code == "not_a_replica"
