"""The REST API in-process: authentication, project isolation and bad input.

No worker runs here: these tests are about what the API accepts, refuses and writes before
any backend is touched. Each refusal must leave the store exactly as it was.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from oneplatform import iam
from oneplatform.api.app import create_app
from oneplatform.api.deps import Platform
from oneplatform.config import Settings
from oneplatform.dbaas.datastores import DATASTORES
from oneplatform.dbaas.datastores.base import DatastoreVersion
from oneplatform.dbaas.datastores.features import Feature
from oneplatform.dbaas.datastores.postgresql import PostgreSQL
from oneplatform.images.recipes import load_recipe
from oneplatform.store.db import Store
from oneplatform.store.models import (
    DbInstance,
    Event,
    Flavor,
    Host,
    Image,
    Instance,
    Operation,
    Pool,
    PortAllocation,
)

IMAGE = "postgresql-15"


@dataclass
class Api:
    client: TestClient
    store: Store
    admin: dict[str, str]
    other: dict[str, str]

    def counts(self) -> tuple[int, ...]:
        with self.store.session() as s:
            return tuple(
                s.scalar(select(func.count()).select_from(m)) or 0
                for m in (
                    Instance,
                    PortAllocation,
                    Operation,
                    Event,
                    Flavor,
                    Pool,
                    Host,
                    DbInstance,
                )
            )


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'api.db'}")
    store = Store(settings.store_url)
    store.migrate()
    admin_token = iam.ensure_admin(store, None)
    assert admin_token
    with store.session() as s:
        pool = Pool(name="containers", compute_type="container", settings={})
        s.add(pool)
        s.flush()
        s.add(
            Host(
                name="h1",
                pool_id=pool.id,
                uri="test://h1",
                vcpus=2,
                ram_mb=4096,
                disk_gb=50,
                traits=[],
                port_range_start=31000,
                port_range_end=31010,
            )
        )
        s.add(
            Flavor(
                name="container.small",
                compute_type="container",
                vcpus=1,
                ram_mb=512,
                disk_gb=2,
                traits=[],
            )
        )
        s.add(
            Flavor(
                name="container.huge",
                compute_type="container",
                vcpus=64,
                ram_mb=512,
                disk_gb=2,
                traits=[],
            )
        )
        s.add(
            Image(
                name=IMAGE,
                content_hash=load_recipe(IMAGE).content_hash(),
                status="READY",
                formats={},
                ports={"postgresql": 5432, "agent": 8471},
            )
        )
    with TestClient(create_app(Platform(store, settings))) as client:
        created = client.post("/v1/projects", json={"name": "other"}, headers=_bearer(admin_token))
        assert created.status_code == 201, created.text
        yield Api(client, store, _bearer(admin_token), _bearer(created.json()["token"]))
    store.dispose()


def _create(
    api: Api, name: str = "db1", headers: dict[str, str] | None = None, **body: object
) -> dict:
    payload = {"name": name, "flavor": "container.small", "image": IMAGE, **body}
    response = api.client.post("/v1/instances", json=payload, headers=headers or api.admin)
    assert response.status_code == 202, response.text
    return response.json()


def _error(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    return error


def _routes(api: Api) -> list[tuple[str, str]]:
    """Every (method, path) the API publishes, path parameters filled with 'x'."""
    spec = api.client.get("/openapi.json").json()
    return [
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, methods in spec["paths"].items()
        if path.startswith("/v1/")  # the Trove facade's (/v1.0/) answer faults: test_trove.py
        for method in methods
    ]


# -- authentication ----------------------------------------------------------------------------
def test_every_endpoint_needs_a_token(api: Api) -> None:
    routes = _routes(api)
    assert len(routes) >= 20
    for method, path in routes:
        _error(api.client.request(method, path), 401, "token_missing")
        bad = api.client.request(method, path, headers=_bearer("onep_not-a-token"))
        _error(bad, 401, "token_invalid")


def test_health_and_openapi_are_open(api: Api) -> None:
    assert api.client.get("/healthz").json()["status"] == "ok"
    spec = api.client.get("/openapi.json").json()
    assert "/v1/instances" in spec["paths"]
    assert "/v1/compute-types" in spec["paths"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        (
            "POST",
            "/v1/flavors",
            {"name": "f.x", "compute_type": "container", "vcpus": 1, "ram_mb": 512, "disk_gb": 1},
        ),
        ("POST", "/v1/pools", {"name": "p2", "compute_type": "container"}),
        ("POST", "/v1/hosts", {"name": "h2", "pool": "containers", "uri": "local://"}),
        ("POST", "/v1/projects", {"name": "third"}),
        ("GET", "/v1/projects", None),
        ("GET", "/v1/hosts", None),
        ("POST", f"/v1/images/{IMAGE}/build", None),
    ],
)
def test_admin_endpoints_refuse_members(api: Api, method: str, path: str, body: object) -> None:
    before = api.counts()
    _error(api.client.request(method, path, json=body, headers=api.other), 403, "admin_required")
    assert api.counts() == before


# -- isolation between projects ----------------------------------------------------------------
INSTANCE_CALLS = [
    ("GET", "/v1/instances/{i}", None),
    ("DELETE", "/v1/instances/{i}", None),
    ("POST", "/v1/instances/{i}/action", {"action": "stop"}),
    ("POST", "/v1/instances/{i}/action", {"action": "start"}),
    ("POST", "/v1/instances/{i}/action", {"action": "reboot"}),
    ("GET", "/v1/instances/{i}/console", None),
    ("POST", "/v1/instances/{i}/exec", {"command": ["true"]}),
    ("POST", "/v1/instances/{i}/snapshot", {"name": "s1"}),
    ("POST", "/v1/instances/{i}/resize", {"flavor": "container.small"}),
]


def test_instance_calls_cover_every_instance_route(api: Api) -> None:
    covered = {(m, p.replace("{i}", "x")) for m, p, _ in INSTANCE_CALLS}
    instance_routes = {(m, p) for m, p in _routes(api) if p.startswith("/v1/instances/")}
    assert instance_routes <= covered


@pytest.mark.parametrize("by", ["id", "name"])
@pytest.mark.parametrize(("method", "path", "body"), INSTANCE_CALLS)
def test_another_project_cannot_see_or_touch_an_instance(
    api: Api, by: str, method: str, path: str, body: object
) -> None:
    instance = _create(api)["instance"]
    before = api.counts()
    url = path.format(i=instance[by])
    _error(api.client.request(method, url, json=body, headers=api.other), 404, "instance_not_found")
    assert api.counts() == before
    assert (
        api.client.get(
            url.rsplit("/", 1)[0] if path.count("/") > 3 else url,
            headers=api.admin,
        ).status_code
        == 200
    )


def test_another_project_cannot_list_or_read_operations(api: Api) -> None:
    accepted = _create(api)
    op_id = accepted["operation"]["id"]
    assert api.client.get("/v1/instances", headers=api.other).json() == []
    assert api.client.get("/v1/operations", headers=api.other).json() == []
    _error(api.client.get(f"/v1/operations/{op_id}", headers=api.other), 404, "operation_not_found")
    assert api.client.get(f"/v1/operations/{op_id}", headers=api.admin).status_code == 200


def test_same_name_in_two_projects_is_fine(api: Api) -> None:
    a = _create(api, "shared")["instance"]
    b = _create(api, "shared", headers=api.other)["instance"]
    assert a["id"] != b["id"]
    assert a["endpoints"][0]["port"] != b["endpoints"][0]["port"]


# -- bad input ---------------------------------------------------------------------------------
def test_create_writes_desired_state_and_an_operation(api: Api) -> None:
    accepted = _create(api)
    op, inst = accepted["operation"], accepted["instance"]
    assert inst["status"] == "BUILD" and inst["host"] == "h1"
    assert inst["endpoints"] == [
        {"name": "agent", "host": "127.0.0.1", "port": 31000},
        {"name": "postgresql", "host": "127.0.0.1", "port": 31001},
    ]
    assert op["status"] == "PENDING" and op["resource_id"] == inst["id"]
    assert [s["name"] for s in op["steps"]] == [
        "image",
        "create",
        "wait_running",
        "wait_ports",
        "finish",
    ]
    shown = api.client.get(f"/v1/operations/{op['id']}", headers=api.admin).json()
    assert shown["progress"] == 0.0


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"flavor": "no.such"}, 404, "flavor_not_found"),
        ({"image": "no-such-image"}, 404, "image_not_found"),
        ({"flavor": "container.huge"}, 409, "no_valid_host"),
        ({"name": "Upper"}, 422, "invalid_input"),
        ({"name": "-lead"}, 422, "invalid_input"),
        ({"name": "under_score"}, 422, "invalid_input"),
        ({"name": ""}, 422, "invalid_input"),
        ({"name": "a" * 64}, 422, "invalid_input"),
        ({"name": 'x"; DROP TABLE instances; --'}, 422, "invalid_input"),
        ({"surprise": 1}, 422, "invalid_input"),
        ({"flavor": None}, 422, "invalid_input"),
    ],
)
def test_bad_create_is_refused_without_leaving_anything(
    api: Api, body: dict, status: int, code: str
) -> None:
    before = api.counts()
    payload = {"name": "db1", "flavor": "container.small", "image": IMAGE, **body}
    _error(api.client.post("/v1/instances", json=payload, headers=api.admin), status, code)
    assert api.counts() == before


def test_no_valid_host_names_the_filter(api: Api) -> None:
    payload = {"name": "big", "flavor": "container.huge", "image": IMAGE}
    error = _error(
        api.client.post("/v1/instances", json=payload, headers=api.admin), 409, "no_valid_host"
    )
    assert error["details"]["filter"] == "vcpus"


def test_duplicate_name_is_refused(api: Api) -> None:
    _create(api)
    before = api.counts()
    payload = {"name": "db1", "flavor": "container.small", "image": IMAGE}
    _error(
        api.client.post("/v1/instances", json=payload, headers=api.admin), 409, "instance_exists"
    )
    assert api.counts() == before


def test_an_image_not_built_for_its_recipe_is_built_for_the_create(api: Api) -> None:
    with api.store.session() as s:
        s.scalars(select(Image)).one().content_hash = "stale"
    payload = {"name": "db1", "flavor": "container.small", "image": IMAGE}
    response = api.client.post("/v1/instances", json=payload, headers=api.admin)
    assert response.status_code == 202, response.text
    with api.store.session() as s:
        image = s.scalars(select(Image)).one()
        assert (image.status, image.content_hash) == ("BUILDING", load_recipe(IMAGE).content_hash())
        kinds = sorted(op.kind for op in s.scalars(select(Operation)))
    assert kinds == ["image.build", "instance.create"]
    # A second create joins that build.
    payload["name"] = "db2"
    assert api.client.post("/v1/instances", json=payload, headers=api.admin).status_code == 202
    with api.store.session() as s:
        assert sorted(op.kind for op in s.scalars(select(Operation))).count("image.build") == 1


def test_an_image_whose_build_failed_is_refused(api: Api) -> None:
    with api.store.session() as s:
        image = s.scalars(select(Image)).one()
        image.status, image.status_message = "ERROR", "debootstrap failed"
    before = api.counts()
    payload = {"name": "db1", "flavor": "container.small", "image": IMAGE}
    error = _error(
        api.client.post("/v1/instances", json=payload, headers=api.admin), 409, "image_not_ready"
    )
    assert "debootstrap failed" in error["message"] and "onep image build" in error["message"]
    assert api.counts() == before


def test_host_out_of_ports_is_refused(api: Api) -> None:
    with api.store.session() as s:
        s.scalars(select(Host)).one().port_range_end = 31003
    _create(api, "a1")
    _create(api, "a2")
    before = api.counts()
    payload = {"name": "a3", "flavor": "container.small", "image": IMAGE}
    _error(api.client.post("/v1/instances", json=payload, headers=api.admin), 409, "no_free_port")
    assert api.counts() == before


@pytest.mark.parametrize(
    "change",
    [
        {"vcpus": 0},
        {"vcpus": 1000},
        {"ram_mb": 1},
        {"disk_gb": 0},
        {"name": "Bad"},
        {"compute_type": "mainframe"},
    ],
)
def test_flavor_sizes_out_of_range_are_refused(api: Api, change: dict) -> None:
    body = {
        "name": "c.x",
        "compute_type": "container",
        "vcpus": 1,
        "ram_mb": 512,
        "disk_gb": 1,
        **change,
    }
    before = api.counts()
    _error(api.client.post("/v1/flavors", json=body, headers=api.admin), 422, "invalid_input")
    assert api.counts() == before


def test_duplicate_flavor_is_refused(api: Api) -> None:
    body = {
        "name": "container.small",
        "compute_type": "container",
        "vcpus": 1,
        "ram_mb": 512,
        "disk_gb": 1,
    }
    _error(api.client.post("/v1/flavors", json=body, headers=api.admin), 409, "flavor_exists")


def test_unsupported_capability_is_refused_up_front_with_the_reason(api: Api) -> None:
    inst = _create(api)["instance"]
    before = api.counts()
    error = _error(
        api.client.post(
            f"/v1/instances/{inst['id']}/snapshot", json={"name": "s1"}, headers=api.admin
        ),
        409,
        "capability_not_supported",
    )
    assert "container" in error["message"] and "snapshot" in error["message"]
    assert error["details"]["capability"] == "snapshot"
    assert api.counts() == before


def test_action_in_the_wrong_state_is_refused(api: Api) -> None:
    inst = _create(api)["instance"]
    before = api.counts()
    for action in ("stop", "start", "reboot"):
        _error(
            api.client.post(
                f"/v1/instances/{inst['id']}/action", json={"action": action}, headers=api.admin
            ),
            409,
            "invalid_state",
        )
    _error(
        api.client.post(
            f"/v1/instances/{inst['id']}/action", json={"action": "explode"}, headers=api.admin
        ),
        422,
        "invalid_input",
    )
    assert api.counts() == before


def test_delete_twice_is_refused_the_second_time(api: Api) -> None:
    inst = _create(api)["instance"]
    first = api.client.delete(f"/v1/instances/{inst['id']}", headers=api.admin)
    assert first.status_code == 202 and first.json()["instance"]["status"] == "DELETING"
    _error(
        api.client.delete(f"/v1/instances/{inst['id']}", headers=api.admin), 409, "invalid_state"
    )


def test_compute_types_explain_every_missing_capability(api: Api) -> None:
    types = api.client.get("/v1/compute-types", headers=api.other).json()
    container = next(t for t in types if t["name"] == "container")
    caps = {c["name"]: c for c in container["capabilities"]}
    assert caps["exec"]["supported"] is True and caps["exec"]["reason"] is None
    missing = [c for c in caps.values() if not c["supported"]]
    assert {c["name"] for c in missing} >= {"snapshot", "resize", "boot_device"}
    assert all(len(c["reason"]) > 20 for c in missing)


def test_unknown_operation_and_image(api: Api) -> None:
    _error(api.client.get("/v1/operations/nope", headers=api.admin), 404, "operation_not_found")
    _error(api.client.get("/v1/images/nope", headers=api.admin), 404, "image_not_found")
    _error(api.client.post("/v1/images/nope/build", headers=api.admin), 404, "image_not_found")


def test_whoami(api: Api) -> None:
    me = api.client.get("/v1/whoami", headers=api.other).json()
    assert me["project"]["name"] == "other" and me["role"] == "member"


# -- databases as a service ----------------------------------------------------------------------
def _create_db(
    api: Api, name: str = "pg1", headers: dict[str, str] | None = None, **body: object
) -> dict:
    payload = {
        "name": name,
        "flavor": "container.small",
        "databases": ["appdb"],
        "users": [{"name": "alice", "password": "Alice-pw-123", "databases": ["appdb"]}],
        **body,
    }
    response = api.client.post("/v1/db/instances", json=payload, headers=headers or api.admin)
    assert response.status_code == 202, response.text
    return response.json()


DB_CALLS = [
    ("GET", "/v1/db/instances/{i}", None),
    ("DELETE", "/v1/db/instances/{i}", None),
    ("POST", "/v1/db/instances/{i}/restart", None),
    ("GET", "/v1/db/instances/{i}/credentials", None),
    ("POST", "/v1/db/instances/{i}/reset-password", None),
    ("GET", "/v1/db/instances/{i}/databases", None),
    ("POST", "/v1/db/instances/{i}/databases", {"name": "x"}),
    ("DELETE", "/v1/db/instances/{i}/databases/appdb", None),
    ("GET", "/v1/db/instances/{i}/users", None),
    ("POST", "/v1/db/instances/{i}/users", {"name": "bob"}),
    ("DELETE", "/v1/db/instances/{i}/users/alice", None),
    ("PUT", "/v1/db/instances/{i}/users/alice/password", {"password": "Another-pw-1"}),
    ("POST", "/v1/db/instances/{i}/users/alice/grants", {"database": "appdb"}),
    ("DELETE", "/v1/db/instances/{i}/users/alice/grants/appdb", None),
    ("POST", "/v1/db/instances/{i}/backups", {"type": "full"}),
    ("GET", "/v1/db/instances/{i}/backup-schedule", None),
    ("PUT", "/v1/db/instances/{i}/backup-schedule", {"every_seconds": 3600, "keep_days": 7}),
    ("DELETE", "/v1/db/instances/{i}/backup-schedule", None),
    ("GET", "/v1/db/instances/{i}/events", None),
    ("GET", "/v1/db/instances/{i}/logs", None),
    ("GET", "/v1/db/instances/{i}/replicas", None),
    ("POST", "/v1/db/instances/{i}/replicas", {}),
    ("POST", "/v1/db/instances/{i}/switchover", {}),
    ("POST", "/v1/db/instances/{i}/move", {"flavor": "container.small"}),
    ("PUT", "/v1/db/instances/{i}/configuration", {"configuration": "x"}),
    ("DELETE", "/v1/db/instances/{i}/configuration", None),
    ("POST", "/v1/db/instances/{i}/resize", {"size_gb": 2}),
    ("PUT", "/v1/db/instances/{i}/autogrow", {"max_gb": 4}),
]


def test_db_calls_cover_every_db_instance_route(api: Api) -> None:
    covered = {(m, re.sub(r"/(appdb|alice)", "/x", p.replace("{i}", "x"))) for m, p, _ in DB_CALLS}
    routes = {(m, p) for m, p in _routes(api) if p.startswith("/v1/db/instances/")}
    assert routes <= covered, routes - covered


def test_create_db_writes_a_db_instance_its_compute_and_an_operation(api: Api) -> None:
    accepted = _create_db(api)
    db, op = accepted["instance"], accepted["operation"]
    assert db["status"] == "BUILD" and db["health"] == "UNKNOWN"
    assert db["compute_type"] == "container" and db["version"] == "15"
    # The stable endpoints (the endpoint proxy's), not the compute instance's port.
    assert db["endpoint"]["host"] == "127.0.0.1" and db["endpoint"]["port"] != 31001
    assert db["read_only_endpoint"]["port"] not in (31001, db["endpoint"]["port"])
    assert [(m["name"], m["role"], m["state"]) for m in db["members"]] == [
        ("pg1", "primary", "BUILD")
    ]
    assert db["members"][0]["endpoint"] == {"host": "127.0.0.1", "port": 31001}
    assert [s["name"] for s in op["steps"]] == [
        "repository",
        "compute",
        "claim",
        "agent",
        "initialize",
        "release",
        "endpoint",
        "replicas",
        "finish",
    ]
    # the compute instance is the service's: not listed among the user's own instances
    assert api.client.get("/v1/instances", headers=api.admin).json() == []
    with api.store.session() as s:
        instance = s.scalars(select(Instance)).one()
        assert instance.managed_by == "dbaas" and instance.disk_gb == 2 + 1
        assert instance.volumes == [
            {"name": "data", "size_gb": 1, "guest_path": "/var/lib/oneplatform"}
        ]
        row = s.scalars(select(DbInstance)).one()
        for column in (
            row.admin_password_enc,
            row.agent_secret_enc,
            row.pending_enc,
            instance.bundle_enc,
        ):
            assert column and "Alice-pw-123" not in column and "password" not in column
    assert "Alice-pw-123" not in str(op)


@pytest.mark.parametrize(("method", "path", "body"), DB_CALLS)
def test_another_project_cannot_see_or_touch_a_database(
    api: Api, method: str, path: str, body: object
) -> None:
    db = _create_db(api)["instance"]
    before = api.counts()
    response = api.client.request(method, path.format(i=db["id"]), json=body, headers=api.other)
    _error(response, 404, "db_instance_not_found")
    assert api.counts() == before
    assert api.client.get("/v1/db/instances", headers=api.other).json() == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"datastore": "oracle"}, 404, "datastore_not_found"),
        ({"version": "9"}, 404, "datastore_version_not_found"),
        ({"flavor": "no.such"}, 404, "flavor_not_found"),
        ({"flavor": "container.huge"}, 409, "no_valid_host"),
        ({"size_gb": 0}, 422, "invalid_input"),
        ({"size_gb": 5000}, 422, "invalid_input"),
        ({"name": "Bad Name"}, 422, "invalid_input"),
        ({"databases": ['x"; DROP DATABASE y; --']}, 422, "invalid_input"),
        ({"databases": ["postgres"]}, 422, "invalid_input"),
        ({"databases": ["pg_catalog2"]}, 422, "invalid_input"),
        ({"databases": ["a", "a"]}, 422, "invalid_input"),
        ({"users": [{"name": "bob", "password": "short"}]}, 422, "invalid_input"),
        (
            {"users": [{"name": "bob", "password": "Long-enough-1", "databases": ["nope"]}]},
            422,
            "invalid_input",
        ),
        ({"users": [{"name": "admin", "password": "Long-enough-1"}]}, 422, "invalid_input"),
    ],
)
def test_bad_db_create_is_refused_without_leaving_anything(
    api: Api, body: dict, status: int, code: str
) -> None:
    before = api.counts()
    payload = {"name": "pg1", "flavor": "container.small", **body}
    _error(api.client.post("/v1/db/instances", json=payload, headers=api.admin), status, code)
    assert api.counts() == before


def test_duplicate_db_name_is_refused(api: Api) -> None:
    _create_db(api)
    before = api.counts()
    payload = {"name": "pg1", "flavor": "container.small"}
    _error(
        api.client.post("/v1/db/instances", json=payload, headers=api.admin),
        409,
        "db_instance_exists",
    )
    assert api.counts() == before


def test_sql_level_calls_wait_for_active(api: Api) -> None:
    db = _create_db(api)["instance"]
    for method, path, body in DB_CALLS:
        if "/databases" in path or "/users" in path or "reset-password" in path:
            response = api.client.request(
                method, path.format(i=db["id"]), json=body, headers=api.admin
            )
            _error(response, 409, "invalid_state")


def test_events_tell_the_database_its_members_and_compute_oldest_first(api: Api) -> None:
    db = _create_db(api)["instance"]
    url = f"/v1/db/instances/{db['name']}/events"
    events = api.client.get(url, headers=api.admin).json()
    seen = [(e["resource"], e["name"], e["to_status"]) for e in events]
    assert ("database", "pg1", "BUILD") in seen and ("member", "pg1", "BUILD") in seen
    assert ("compute", "pg1", "BUILD") in seen  # the member's compute instance
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    with api.store.session() as s:  # another database's event is not among them
        s.add(Event(resource_type="db_instance", resource_id="f" * 32, to_status="ACTIVE"))
        s.add(Event(resource_type="db_instance", resource_id=db["id"], to_status="ACTIVE",
                    message="the latest"))  # fmt: skip
    latest = api.client.get(url, params={"limit": 1}, headers=api.admin).json()
    assert [(e["name"], e["message"]) for e in latest] == [("pg1", "the latest")]
    assert len(api.client.get(url, headers=api.admin).json()) == len(events) + 1
    _error(api.client.get(url, params={"limit": 0}, headers=api.admin), 422, "invalid_input")


def test_metrics_are_prometheus_text_for_an_admin_and_pass_promtool(api: Api) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    _create_db(api)
    with api.store.session() as s:  # as the health checker records what the agent said
        s.scalars(select(DbInstance)).one().engine_stats = {
            "connections": 3,
            "transactions": 120,
            "size_bytes": 7_000_000,
            "cache_hits": 90,
            "cache_misses": 10,
            "replicas": {"pg1-r1": {"behind": 4096, "seconds": 0.5}},
        }
    api.client.get("/v1/db/instances/nope", headers=api.admin)  # a 404, counted too
    assert api.client.get("/metrics").status_code == 401
    _error(api.client.get("/metrics", headers=api.other), 403, "admin_required")
    scraped = api.client.get("/metrics", headers=api.admin)
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    db = {"datastore": "postgresql", "compute_type": "container", "status": "BUILD",
          "health": "UNKNOWN"}  # fmt: skip
    assert value("onep_databases", **db) == 1
    assert value("onep_operations", kind="db.create", status="PENDING") == 1
    host = {"host": "h1", "pool": "containers", "compute_type": "container"}
    assert value("onep_host_capacity", **host, resource="vcpus") == 2 * 4.0  # overcommit
    assert value("onep_host_used", **host, resource="ram_mb") == 512
    created = {"route": "/v1/db/instances", "method": "POST", "status": "202"}
    assert value("onep_api_requests_total", **created) == 1
    missing = {"route": "/v1/db/instances/{ident}", "method": "GET", "status": "404"}
    assert value("onep_api_requests_total", **missing) == 1
    assert value("onep_compute_repairs") == 0
    with api.store.session() as s:
        project_id = s.scalars(select(DbInstance.project_id)).one()
    pg = {"project": project_id, "database": "pg1", "datastore": "postgresql"}
    assert value("onep_db_connections", **pg) == 3
    assert value("onep_db_transactions_total", **pg) == 120
    assert value("onep_db_size_bytes", **pg) == 7_000_000
    assert value("onep_db_cache_hit_ratio", **pg) == 0.9
    assert value("onep_db_replica_lag_bytes", **pg, replica="pg1-r1") == 4096
    assert value("onep_db_replica_lag_seconds", **pg, replica="pg1-r1") == 0.5
    promtool = shutil.which("promtool")
    if promtool is None:
        assert os.environ.get("CI") != "true", "promtool is not installed (scripts/setup.sh)"
        pytest.skip("promtool is not installed (scripts/setup.sh)")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=scraped.text, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_credentials_are_the_owners(api: Api) -> None:
    db = _create_db(api)["instance"]
    creds = api.client.get(f"/v1/db/instances/{db['id']}/credentials", headers=api.admin).json()
    assert creds["username"] == "admin" and len(creds["password"]) >= 24
    with api.store.session() as s:
        row = s.scalars(select(DbInstance)).one()
        assert creds["password"] not in row.admin_password_enc


def test_datastores_catalog(api: Api) -> None:
    catalog = api.client.get("/v1/datastores", headers=api.other).json()
    pg = next(d for d in catalog if d["name"] == "postgresql")
    v15 = next(v for v in pg["versions"] if v["version"] == "15")
    assert (v15["image"], v15["default"]) == ("postgresql-15", True)
    caps = {c["name"]: c for c in v15["capabilities"]}
    assert set(caps) == {f.value for f in Feature}
    assert all(c["supported"] and c["reason"] is None and c["description"] for c in caps.values())
    assert v15["backup_types"] == ["full", "diff", "incr"]


# -- datastore capabilities: what an engine lacks is refused up front, with its reason ----------
class _KeyValue(PostgreSQL):
    """A datastore that lacks what a key-value engine lacks (for the refusals' logic only)."""

    name = "keyvalue"
    versions = (
        DatastoreVersion(
            "1", IMAGE, unsupported={Feature.SWITCHOVER: "version 1 has no switchover"}
        ),
    )
    default_version = "1"
    unsupported = {
        Feature.DATABASES: "it has no databases, only keys",
        Feature.GRANTS: "its users are granted key patterns, not databases",
        Feature.PITR: "its snapshots are points, not a window",
    }
    backup_types = ("full",)


@pytest.fixture
def keyvalue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DATASTORES, _KeyValue.name, _KeyValue())


@pytest.mark.usefixtures("keyvalue")
def test_the_catalog_says_what_a_datastore_lacks_and_why(api: Api) -> None:
    catalog = api.client.get("/v1/datastores", headers=api.other).json()
    kv = next(d for d in catalog if d["name"] == "keyvalue")["versions"][0]
    lacking = {c["name"]: c["reason"] for c in kv["capabilities"] if not c["supported"]}
    assert lacking == {
        "databases": "it has no databases, only keys",
        "grants": "its users are granted key patterns, not databases",
        "pitr": "its snapshots are points, not a window",
        "switchover": "version 1 has no switchover",
    }
    assert kv["backup_types"] == ["full"]


@pytest.mark.usefixtures("keyvalue")
@pytest.mark.parametrize(
    ("body", "feature"),
    [
        ({"databases": ["appdb"]}, "databases"),
        ({"users": [{"name": "alice", "password": "Alice-pw-123", "databases": ["a"]}]}, "grants"),
        ({"restore_from": "pg1", "to_time": "2026-01-01T00:00:00Z"}, "pitr"),
    ],
)
def test_a_create_asking_what_the_datastore_lacks_is_refused_and_writes_nothing(
    api: Api, body: dict[str, object], feature: str
) -> None:
    before = api.counts()
    payload = {"name": "kv1", "datastore": "keyvalue", "flavor": "container.small", **body}
    error = _error(
        api.client.post("/v1/db/instances", json=payload, headers=api.admin),
        409,
        "capability_not_supported",
    )
    assert error["details"]["capability"] == feature
    assert error["message"].startswith(f"keyvalue 1 does not support {feature}: ")
    assert api.counts() == before


@pytest.mark.usefixtures("keyvalue")
def test_a_restore_naming_no_engine_is_of_its_sources(api: Api) -> None:
    """A restore that names no datastore takes its source's (here refused for what that one
    lacks, not as a PostgreSQL restore of another engine's data); one that names another
    datastore is refused as a mismatch."""
    _create_db(api, "kv1", datastore="keyvalue", databases=[], users=[])
    body = {"name": "kv2", "flavor": "container.small", "restore_from": "kv1",
            "to_time": "2026-01-01T00:00:00Z"}  # fmt: skip
    before = api.counts()
    error = _error(
        api.client.post("/v1/db/instances", json=body, headers=api.admin),
        409,
        "capability_not_supported",
    )
    assert error["message"].startswith("keyvalue 1 does not support pitr: ")
    other = {**body, "datastore": "postgresql"}
    _error(
        api.client.post("/v1/db/instances", json=other, headers=api.admin),
        422,
        "datastore_mismatch",
    )
    assert api.counts() == before


@pytest.mark.usefixtures("keyvalue")
def test_requests_for_what_a_datastore_lacks_are_refused_with_the_reason(api: Api) -> None:
    """On a database of the datastore: each request names the feature it lacks (before its
    state is looked at); what it has is not refused for that reason."""
    db = _create_db(api, "kv1", datastore="keyvalue", databases=[], users=[])["instance"]
    base = f"/v1/db/instances/{db['id']}"
    refused = [
        ("GET", f"{base}/databases", None, "databases"),
        ("POST", f"{base}/databases", {"name": "x"}, "databases"),
        ("DELETE", f"{base}/databases/x", None, "databases"),
        ("POST", f"{base}/users", {"name": "bob", "databases": ["x"]}, "grants"),
        ("POST", f"{base}/users/alice/grants", {"database": "x"}, "grants"),
        ("DELETE", f"{base}/users/alice/grants/x", None, "grants"),
        ("POST", f"{base}/backups", {"type": "incr"}, "backups"),
        ("PUT", f"{base}/backup-schedule", _INCREMENTAL_SCHEDULE, "backups"),
        ("POST", f"{base}/switchover", {}, "switchover"),
    ]
    before = api.counts()
    for method, path, body, feature in refused:
        response = api.client.request(method, path, json=body, headers=api.admin)
        error = _error(response, 409, "capability_not_supported")
        assert error["details"]["capability"] == feature, (method, path)
    assert api.counts() == before
    # Supported: refused only because the database is not ACTIVE yet.
    for method, path, body in [
        ("GET", f"{base}/users", None),
        ("POST", f"{base}/backups", {"type": "full"}),
        ("POST", f"{base}/replicas", {}),
    ]:
        response = api.client.request(method, path, json=body, headers=api.admin)
        _error(response, 409, "invalid_state")


_INCREMENTAL_SCHEDULE = {"every_seconds": 3600, "full_every_seconds": 86400, "keep_days": 7}


# -- admin input is typed by compute type ------------------------------------------------------
def _pool(api: Api, compute_type: str) -> None:
    body = {"name": f"{compute_type}-pool", "compute_type": compute_type}
    assert api.client.post("/v1/pools", json=body, headers=api.admin).status_code == 201


@pytest.mark.parametrize(
    ("compute_type", "settings"),
    [
        ("container", {"runtime": "runc", "nested": {"a": [1, {"b": 2}]}}),
        ("container", {"runtime": "kata"}),
        ("container", {"domain_type": "qemu"}),  # a VM pool's setting
        ("vm", {"stop_grace_s": 0}),
        ("vm", {"storage_path": "relative/path"}),
        ("baremetal", {"runtime": "runc"}),
        ("container", {"driver": "no-such-driver"}),
    ],
)
def test_pool_settings_follow_the_schema_of_their_compute_type(
    api: Api, compute_type: str, settings: dict
) -> None:
    before = api.counts()
    body = {"name": "p1", "compute_type": compute_type, "settings": settings}
    response = api.client.post("/v1/pools", json=body, headers=api.admin)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] in ("invalid_input", "driver_not_available")
    assert api.counts() == before


def test_pool_settings_are_stored_as_given(api: Api) -> None:
    body = {"name": "v1", "compute_type": "vm", "settings": {"domain_type": "qemu"}}
    created = api.client.post("/v1/pools", json=body, headers=api.admin)
    assert created.status_code == 201, created.text
    assert created.json()["settings"] == {"domain_type": "qemu"}  # the driver keeps defaults


@pytest.mark.parametrize(
    ("pool", "uri", "status", "code"),
    [
        ("baremetal-pool", "node://1234", 409, "hosts_are_enrolled"),
        ("container-pool", "node://1234", 422, "invalid_input"),
        ("container-pool", "qemu:///system", 422, "invalid_input"),
        ("vm-pool", "local://", 422, "invalid_input"),
        ("container-pool", "local://x,restrict=off", 422, "invalid_input"),
    ],
)
def test_host_uris_follow_their_compute_type(
    api: Api, pool: str, uri: str, status: int, code: str
) -> None:
    for compute_type in ("container", "vm", "baremetal"):
        _pool(api, compute_type)
    before = api.counts()
    body = {"name": "h9", "pool": pool, "uri": uri}
    _error(api.client.post("/v1/hosts", json=body, headers=api.admin), status, code)
    assert api.counts() == before


@pytest.mark.parametrize(
    "change",
    [
        {"bind_address": "127.0.0.1,hostfwd=tcp::1-:22"},
        {"bind_address": "localhost"},
        {"port_range_start": 30000, "port_range_end": 29000},
        {"traits": ["ok", "not ok"]},
    ],
)
def test_host_addresses_and_ranges_are_checked(api: Api, change: dict) -> None:
    _pool(api, "container")
    before = api.counts()
    body = {"name": "h9", "pool": "container-pool", "uri": "local://", **change}
    _error(api.client.post("/v1/hosts", json=body, headers=api.admin), 422, "invalid_input")
    assert api.counts() == before


SSH_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJRXLLIC+Y7EnChRs4+Gu4qZPzTStB3W+wBm837mOIdU"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"uri": "local://", "identity_file": "/etc/hostname"}, "invalid_input"),
        ({"identity_file": "relative/key"}, "invalid_input"),
        ({"identity_file": "/nonexistent/key"}, "identity_file_not_found"),
        ({"host_key": "not a key"}, "invalid_input"),
        ({}, "host_key_unknown"),  # no host_key, and no ~/.ssh/known_hosts names it
        ({"host_key": SSH_HOST_KEY}, "host_unreachable"),  # nothing listens on port 1
    ],
)
def test_a_remote_host_is_checked_and_probed_before_it_is_stored(
    api: Api, change: dict, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _pool(api, "container")
    before = api.counts()
    uri = "ssh://root@127.0.0.1:1/run/podman/podman.sock"
    body = {"name": "h9", "pool": "container-pool", "uri": uri, **change}
    _error(api.client.post("/v1/hosts", json=body, headers=api.admin), 422, code)
    assert api.counts() == before


# -- the gate: bodies are bounded and never read before authentication ---------------------------
def test_no_body_is_parsed_before_authentication(api: Api) -> None:
    response = api.client.post(
        "/v1/instances", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert (response.status_code, response.json()["error"]["code"]) == (401, "token_missing")


def test_a_body_over_the_limit_is_refused(api: Api) -> None:
    big = b"[" + b"0," * (600 * 1024) + b"0]"
    response = api.client.post("/v1/instances", content=big, headers=api.admin)
    assert (response.status_code, response.json()["error"]["code"]) == (413, "body_too_large")

    def chunks():  # type: ignore[no-untyped-def]  # no Content-Length: counted as it comes
        for _ in range(20):
            yield b" " * (100 * 1024)

    response = api.client.post("/v1/instances", content=chunks(), headers=api.admin)
    assert response.status_code == 413


def test_a_deploy_report_with_an_unknown_token_is_not_read(api: Api) -> None:
    response = api.client.post("/v1/deploy/not-a-token/status", content=b"status=ok\n" * 10000)
    assert response.status_code == 404


# -- roles: every route with each role -----------------------------------------------------------
# The least role each route needs ("reader": any token of the project; "public": no token at
# all, the route checks what it is given itself). A route missing here
# fails test_the_role_table_covers_every_route: a new route is classified when it is added.
# Admin-only writes get a valid body: their check runs in the route, after the body's.
FLAVOR_BODY = {"name": "f.x", "compute_type": "container", "vcpus": 1, "ram_mb": 512, "disk_gb": 1}
ROLE_TABLE: dict[tuple[str, str], tuple[str, object]] = {
    ("GET", "/v1/compute-types"): ("reader", None),
    ("GET", "/v1/pools"): ("admin", None),
    ("POST", "/v1/pools"): ("admin", {"name": "p2", "compute_type": "container"}),
    ("GET", "/v1/hosts"): ("admin", None),
    ("POST", "/v1/hosts"): ("admin", {"name": "h2", "pool": "containers", "uri": "local://"}),
    ("GET", "/v1/flavors"): ("reader", None),
    ("POST", "/v1/flavors"): ("admin", FLAVOR_BODY),
    ("GET", "/v1/images"): ("reader", None),
    ("GET", "/v1/images/{name}"): ("reader", None),
    ("POST", "/v1/images/{name}/build"): ("admin", None),
    ("GET", "/v1/instances"): ("reader", None),
    ("POST", "/v1/instances"): ("member", {}),
    ("GET", "/v1/instances/{ident}"): ("reader", None),
    ("DELETE", "/v1/instances/{ident}"): ("member", None),
    ("POST", "/v1/instances/{ident}/action"): ("member", {"action": "stop"}),
    ("POST", "/v1/instances/{ident}/resize"): ("member", {"flavor": "container.small"}),
    ("GET", "/v1/instances/{ident}/console"): ("reader", None),
    ("POST", "/v1/instances/{ident}/exec"): ("member", {"command": ["true"]}),
    ("POST", "/v1/instances/{ident}/snapshot"): ("member", {"name": "s1"}),
    ("GET", "/v1/operations"): ("reader", None),
    ("GET", "/v1/operations/{operation_id}"): ("reader", None),
    ("GET", "/v1/projects"): ("admin", None),
    ("POST", "/v1/projects"): ("admin", {"name": "third"}),
    ("GET", "/v1/whoami"): ("reader", None),
    ("GET", "/v1/quota"): ("reader", None),
    ("GET", "/v1/projects/{name}/quota"): ("admin", None),  # another project's
    ("PATCH", "/v1/projects/{name}/quota"): ("admin", {"databases": 1}),
    ("GET", "/v1/tokens"): ("reader", None),
    ("POST", "/v1/tokens"): ("member", {}),
    ("DELETE", "/v1/tokens/{name}"): ("member", None),
    ("GET", "/v1/datastores"): ("reader", None),
    ("GET", "/v1/db/instances"): ("reader", None),
    ("POST", "/v1/db/instances"): ("member", {}),
    ("GET", "/v1/db/instances/{ident}"): ("reader", None),
    ("DELETE", "/v1/db/instances/{ident}"): ("member", None),
    ("POST", "/v1/db/instances/{ident}/restart"): ("member", None),
    ("GET", "/v1/db/instances/{ident}/events"): ("reader", None),
    ("GET", "/v1/db/instances/{ident}/logs"): ("reader", None),
    ("GET", "/v1/db/instances/{ident}/replicas"): ("reader", None),
    ("POST", "/v1/db/instances/{ident}/replicas"): ("member", {}),
    ("POST", "/v1/db/instances/{ident}/switchover"): ("member", {}),
    ("POST", "/v1/db/instances/{ident}/move"): ("member", {"flavor": "container.small"}),
    ("GET", "/v1/db/instances/{ident}/credentials"): ("member", None),  # would let it write
    ("POST", "/v1/db/instances/{ident}/reset-password"): ("member", None),
    ("GET", "/v1/db/instances/{ident}/databases"): ("reader", None),
    ("POST", "/v1/db/instances/{ident}/databases"): ("member", {"name": "d1"}),
    ("DELETE", "/v1/db/instances/{ident}/databases/{name}"): ("member", None),
    ("GET", "/v1/db/instances/{ident}/users"): ("reader", None),
    ("POST", "/v1/db/instances/{ident}/users"): ("member", {}),
    ("DELETE", "/v1/db/instances/{ident}/users/{name}"): ("member", None),
    ("PUT", "/v1/db/instances/{ident}/users/{name}/password"): ("member", {}),
    ("POST", "/v1/db/instances/{ident}/users/{name}/grants"): ("member", {}),
    ("DELETE", "/v1/db/instances/{ident}/users/{name}/grants/{database}"): ("member", None),
    ("POST", "/v1/db/instances/{ident}/backups"): ("member", {}),
    ("GET", "/v1/backups"): ("reader", None),
    ("GET", "/v1/backups/{ident}"): ("reader", None),
    ("DELETE", "/v1/backups/{ident}"): ("member", None),
    ("GET", "/v1/db/instances/{ident}/backup-schedule"): ("reader", None),
    ("PUT", "/v1/db/instances/{ident}/backup-schedule"): ("member", {}),
    ("DELETE", "/v1/db/instances/{ident}/backup-schedule"): ("member", None),
    ("GET", "/v1/clusters"): ("reader", None),
    ("POST", "/v1/clusters"): ("member", {"name": "c9", "node_flavor": "vm.small"}),
    ("GET", "/v1/clusters/{ident}"): ("reader", None),
    ("GET", "/v1/clusters/{ident}/connect"): ("member", None),
    ("POST", "/v1/clusters/{ident}/resize"): ("member", {"size": 2}),
    ("DELETE", "/v1/clusters/{ident}"): ("member", None),
    ("GET", "/v1/nodes"): ("admin", None),
    ("POST", "/v1/nodes"): (
        "admin",
        {"name": "n9", "bmc_address": "http://127.0.0.1:1", "bmc_system_id": "x"},
    ),
    ("GET", "/v1/nodes/{ident}"): ("admin", None),
    ("POST", "/v1/nodes/{ident}/manage"): ("admin", None),
    ("POST", "/v1/nodes/{ident}/inspect"): ("admin", None),
    ("POST", "/v1/nodes/{ident}/provide"): ("admin", None),
    ("POST", "/v1/nodes/{ident}/power"): ("admin", {"action": "on"}),
    ("GET", "/v1/warm"): ("admin", None),
    ("PUT", "/v1/warm"): ("admin", {"flavor": "container.small", "count": 0}),
    ("DELETE", "/v1/db/replicas/{name}"): ("member", None),
    ("POST", "/v1/db/replicas/{name}/detach"): ("member", {}),
    ("GET", "/metrics"): ("admin", None),
    ("POST", "/v1/ui/tickets"): ("reader", None),  # its session has the token's role
    ("GET", "/v1/db/configurations"): ("reader", None),
    ("POST", "/v1/db/configurations"): ("member", {}),
    ("GET", "/v1/db/configurations/{ident}"): ("reader", None),
    ("PATCH", "/v1/db/configurations/{ident}"): ("member", {}),
    ("DELETE", "/v1/db/configurations/{ident}"): ("member", None),
    ("PUT", "/v1/db/instances/{ident}/configuration"): ("member", {"configuration": "g1"}),
    ("DELETE", "/v1/db/instances/{ident}/configuration"): ("member", None),
    ("GET", "/v1/datastores/{datastore}/versions/{version}/parameters"): ("reader", None),
    ("POST", "/v1/db/instances/{ident}/resize"): ("member", {"size_gb": 2}),
    ("PUT", "/v1/db/instances/{ident}/autogrow"): ("member", {"max_gb": 4}),
    ("GET", "/v1/users"): ("admin", None),
    ("POST", "/v1/projects/{project}/users"): ("admin", {"name": "u1"}),
    ("DELETE", "/v1/projects/{project}/users/{name}"): ("admin", None),
    ("GET", "/identity"): ("public", None),  # Keystone v3: credentials in the body
    ("GET", "/identity/v3"): ("public", None),
    ("POST", "/identity/v3/auth/tokens"): ("public", {}),
    # the Trove facade (its project id: the caller's own; a foreign one is test_trove.py's)
    ("GET", "/v1.0/{project_id}"): ("reader", None),
    ("GET", "/v1.0/{project_id}/flavors"): ("reader", None),
    ("GET", "/v1.0/{project_id}/flavors/{flavor_id}"): ("reader", None),
    ("GET", "/v1.0/{project_id}/datastores"): ("reader", None),
    ("GET", "/v1.0/{project_id}/datastores/{datastore}"): ("reader", None),
    ("GET", "/v1.0/{project_id}/datastores/{datastore}/versions"): ("reader", None),
    ("GET", "/v1.0/{project_id}/datastores/{datastore}/versions/{version}"): ("reader", None),
    ("GET", "/v1.0/{project_id}/datastores/versions/{version_id}"): ("reader", None),
    ("GET", "/v1.0/{project_id}/datastores/{datastore}/versions/{version}/flavors"): (
        "reader",
        None,
    ),
    ("GET", "/v1.0/{project_id}/datastores/{datastore}/versions/{version}/parameters"): (
        "reader",
        None,
    ),
    ("GET", "/v1.0/{project_id}/datastores/{datastore}/versions/{version}/parameters/{name}"): (
        "reader",
        None,
    ),
    ("GET", "/v1.0/{project_id}/datastores/versions/{version_id}/parameters"): ("reader", None),
    ("GET", "/v1.0/{project_id}/datastores/versions/{version_id}/parameters/{name}"): (
        "reader",
        None,
    ),
    ("GET", "/v1.0/{project_id}/instances"): ("reader", None),
    ("POST", "/v1.0/{project_id}/instances"): ("member", {}),
    ("GET", "/v1.0/{project_id}/instances/detail"): ("reader", None),
    ("GET", "/v1.0/{project_id}/instances/{instance_id}"): ("reader", None),
    ("PUT", "/v1.0/{project_id}/instances/{instance_id}"): ("member", {"instance": {}}),
    ("PATCH", "/v1.0/{project_id}/instances/{instance_id}"): ("member", {"instance": {}}),
    ("DELETE", "/v1.0/{project_id}/instances/{instance_id}"): ("member", None),
    ("POST", "/v1.0/{project_id}/instances/{instance_id}/action"): ("member", {"restart": {}}),
    ("GET", "/v1.0/{project_id}/instances/{instance_id}/configuration"): ("reader", None),
    ("GET", "/v1.0/{project_id}/instances/{instance_id}/databases"): ("reader", None),
    ("POST", "/v1.0/{project_id}/instances/{instance_id}/databases"): ("member", {}),
    ("DELETE", "/v1.0/{project_id}/instances/{instance_id}/databases/{name}"): ("member", None),
    ("GET", "/v1.0/{project_id}/instances/{instance_id}/users"): ("reader", None),
    ("POST", "/v1.0/{project_id}/instances/{instance_id}/users"): ("member", {}),
    ("PUT", "/v1.0/{project_id}/instances/{instance_id}/users"): ("member", {}),
    ("POST", "/v1.0/{project_id}/instances/{instance_id}/users/{user}"): ("member", {}),
    ("GET", "/v1.0/{project_id}/instances/{instance_id}/users/{user}"): ("reader", None),
    ("PUT", "/v1.0/{project_id}/instances/{instance_id}/users/{user}"): ("member", {}),
    ("DELETE", "/v1.0/{project_id}/instances/{instance_id}/users/{user}"): ("member", None),
    ("GET", "/v1.0/{project_id}/instances/{instance_id}/users/{user}/databases"): (
        "reader",
        None,
    ),
    ("PUT", "/v1.0/{project_id}/instances/{instance_id}/users/{user}/databases"): ("member", {}),
    ("DELETE", "/v1.0/{project_id}/instances/{instance_id}/users/{user}/databases/{database}"): (
        "member",
        None,
    ),
    ("GET", "/v1.0/{project_id}/backups"): ("reader", None),
    ("POST", "/v1.0/{project_id}/backups"): ("member", {}),
    ("GET", "/v1.0/{project_id}/instances/{instance_id}/backups"): ("reader", None),
    ("GET", "/v1.0/{project_id}/backups/{backup_id}"): ("reader", None),
    ("DELETE", "/v1.0/{project_id}/backups/{backup_id}"): ("member", None),
    ("GET", "/v1.0/{project_id}/configurations"): ("reader", None),
    ("POST", "/v1.0/{project_id}/configurations"): ("member", {}),
    ("GET", "/v1.0/{project_id}/configurations/{config_id}"): ("reader", None),
    ("PATCH", "/v1.0/{project_id}/configurations/{config_id}"): ("member", {}),
    ("PUT", "/v1.0/{project_id}/configurations/{config_id}"): ("member", {}),
    ("DELETE", "/v1.0/{project_id}/configurations/{config_id}"): ("member", None),
    ("GET", "/v1.0/{project_id}/configurations/{config_id}/instances"): ("reader", None),
    ("GET", "/v1.0/{project_id}/limits"): ("reader", None),
    ("GET", "/v1.0/{project_id}/mgmt/quotas/{project}"): ("reader", None),
    ("PUT", "/v1.0/{project_id}/mgmt/quotas/{project}"): ("admin", {"quotas": {"backups": 5}}),
    ("POST", "/v1.0/{project_id}/instances/{instance_id}/root"): ("member", None),
    ("GET", "/v1.0/{project_id}/instances/{instance_id}/root"): ("reader", None),
    ("DELETE", "/v1.0/{project_id}/instances/{instance_id}/root"): ("member", None),
    ("GET", "/v1.0/{project_id}/instances/{instance_id}/log"): ("reader", None),
    ("POST", "/v1.0/{project_id}/instances/{instance_id}/log"): ("member", {"name": "engine"}),
    # clusters and modules: 501 notImplemented for every role that reaches them
    ("GET", "/v1.0/{project_id}/clusters"): ("reader", None),
    ("POST", "/v1.0/{project_id}/clusters"): ("member", {}),
    ("GET", "/v1.0/{project_id}/clusters/{cluster_id}"): ("reader", None),
    ("POST", "/v1.0/{project_id}/clusters/{cluster_id}"): ("member", {}),
    ("DELETE", "/v1.0/{project_id}/clusters/{cluster_id}"): ("member", None),
    ("GET", "/v1.0/{project_id}/clusters/{cluster_id}/instances/{instance_id}"): ("reader", None),
    ("GET", "/v1.0/{project_id}/modules"): ("reader", None),
    ("POST", "/v1.0/{project_id}/modules"): ("member", {}),
    ("GET", "/v1.0/{project_id}/modules/{module_id}"): ("reader", None),
    ("PUT", "/v1.0/{project_id}/modules/{module_id}"): ("member", {}),
    ("DELETE", "/v1.0/{project_id}/modules/{module_id}"): ("member", None),
    ("GET", "/v1.0/{project_id}/modules/{module_id}/instances"): ("reader", None),
    ("GET", "/v1.0/{project_id}/instances/{instance_id}/modules"): ("reader", None),
    ("POST", "/v1.0/{project_id}/instances/{instance_id}/modules"): ("member", {}),
    ("DELETE", "/v1.0/{project_id}/instances/{instance_id}/modules/{module_id}"): (
        "member",
        None,
    ),
}
RANKS = {"public": -1, "reader": 0, "member": 1, "admin": 2}


def _code(body: dict) -> str | None:
    """An error's stable code: the platform's ``error.code``, or a Trove fault's
    ``error_code``."""
    if "error" in body:
        return body["error"].get("code")
    [fault] = body.values()
    return fault.get("error_code")


def _templates(api: Api) -> set[tuple[str, str]]:
    spec = api.client.get("/openapi.json").json()
    return {(m.upper(), p) for p, methods in spec["paths"].items() for m in methods}


def test_the_role_table_covers_every_route(api: Api) -> None:
    published = {r for r in _templates(api) if r[1] != "/healthz"}
    assert published == set(ROLE_TABLE)


def test_public_routes_need_no_token_and_the_others_do(api: Api) -> None:
    """Without a token a public route answers for itself (never 401/403); every other route
    is refused 401 before its body is read, changing nothing."""
    wrong: list[str] = []
    before = api.counts()
    for (method, template), (least, body) in ROLE_TABLE.items():
        path = re.sub(r"\{[^}]+\}", "x", template)
        got = api.client.request(method, path, json=body).status_code
        if (least == "public") == (got == 401) or got == 403:
            wrong.append(f"{method} {template} ({least}) without a token: {got}")
    assert not wrong, "\n".join(wrong)
    assert api.counts() == before


@pytest.fixture
def role_headers(api: Api) -> dict[str, dict[str, str]]:
    """A token of each role: the admin's, and a member's and a reader's of project other."""
    made = api.client.post("/v1/tokens", json={"name": "ro", "role": "reader"}, headers=api.other)
    assert made.status_code == 201, made.text
    return {"admin": api.admin, "member": api.other, "reader": _bearer(made.json()["token"])}


@pytest.mark.parametrize("role", ["admin", "member", "reader"])
def test_every_route_with_each_role(
    api: Api, role_headers: dict[str, dict[str, str]], role: str
) -> None:
    """Each role reaches what its rank allows (a 2xx, 404 or 409 of the route itself, never
    401 or 403) and is refused the rest with 403 and the code that says why, leaving the
    store as it was."""
    wrong: list[str] = []
    project_id = api.client.get("/v1/whoami", headers=role_headers[role]).json()["project"]["id"]
    for (method, template), (least, body) in ROLE_TABLE.items():
        path = template.replace("{project_id}", project_id)
        path = re.sub(r"\{[^}]+\}", "x", path).replace("/images/x", f"/images/{IMAGE}")
        before = api.counts()
        response = api.client.request(method, path, json=body, headers=role_headers[role])
        got = response.status_code
        code = _code(response.json()) if got >= 400 and got != 404 else None
        if RANKS[role] >= RANKS[least]:
            if got in (401, 403):
                wrong.append(f"{method} {template}: {role} refused ({got} {code})")
        else:
            want = "read_only" if role == "reader" and least == "member" else "admin_required"
            if role == "reader" and method not in ("GET", "HEAD") and least == "admin":
                want = "read_only"
            if (got, code) != (403, want):
                wrong.append(f"{method} {template}: {role} got {got} {code}, not 403 {want}")
            elif api.counts() != before:
                wrong.append(f"{method} {template}: the refusal of {role} changed the store")
    assert not wrong, "\n".join(wrong)


def test_quotas_through_the_api(api: Api) -> None:
    quota = "/v1/projects/other/quota"
    _error(api.client.patch(quota, json={"vcpus": -1}, headers=api.admin), 422, "invalid_input")
    _error(api.client.patch(quota, json={"cpus": 1}, headers=api.admin), 422, "invalid_input")
    _error(api.client.patch(quota, json={"vcpus": 1}, headers=api.other), 403, "admin_required")
    _error(api.client.get("/v1/projects/nope/quota", headers=api.admin), 404, "project_not_found")
    set_ = api.client.patch(quota, json={"vcpus": 0, "backups": 3}, headers=api.admin)
    assert set_.status_code == 200, set_.text
    own = api.client.get("/v1/quota", headers=api.other).json()
    assert own["project"]["name"] == "other"
    assert own["quota"]["vcpus"] == {"limit": 0, "used": 0}
    assert own["quota"]["backups"] == {"limit": 3, "used": 0}

    before = api.counts()
    payload = {"name": "i1", "flavor": "container.small", "image": IMAGE}
    refused = api.client.post("/v1/instances", json=payload, headers=api.other)
    error = _error(refused, 403, "quota_exceeded")
    assert error["details"] == {"resource": "vcpus", "limit": 0, "used": 0, "requested": 1}
    assert api.counts() == before

    lifted = api.client.patch(quota, json={"vcpus": None}, headers=api.admin).json()
    assert lifted["quota"]["vcpus"]["limit"] is None
    assert lifted["quota"]["backups"]["limit"] == 3  # left out: kept
    _create(api, headers=api.other)
    assert api.client.get("/v1/quota", headers=api.other).json()["quota"]["vcpus"]["used"] == 1
