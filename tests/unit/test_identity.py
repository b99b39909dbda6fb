"""Platform users and the Keystone v3 facade at /identity, through the application: users
are created by an admin with a hashed password; signing in gives an ordinary platform token
of the user's project, role and a short life; every refusal is in Keystone's format."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select, update

from oneplatform import iam
from oneplatform.api.app import create_app
from oneplatform.api.deps import Platform
from oneplatform.config import Settings
from oneplatform.store.db import Store
from oneplatform.store.models import Token, User

AUTH_FAILED = "The request you have made requires authentication."
DEFAULT = {"name": "Default"}


class World:
    def __init__(self, client: TestClient, store: Store, admin: str, other: str) -> None:
        self.client, self.store, self.admin, self.other = client, store, admin, other

    def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.request(method, path, headers=headers, **kw)

    def user(self, name: str, project: str = "team-a", **body: Any) -> dict[str, Any]:
        made = self.call(
            "POST", f"/v1/projects/{project}/users", self.admin, json={"name": name, **body}
        )
        assert made.status_code == 201, made.text
        return made.json()  # type: ignore[no-any-return]

    def sign_in(self, body: dict[str, Any]) -> Response:
        return self.client.post("/identity/v3/auth/tokens", json=body)

    def tokens(self) -> int:
        with self.store.session() as s:
            return s.scalar(select(func.count()).select_from(Token)) or 0


def password_body(
    user: dict[str, Any], password: str, project: dict[str, Any] | None
) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "identity": {"methods": ["password"], "password": {"user": {**user, "password": password}}}
    }
    if project is not None:
        auth["scope"] = {"project": project}
    return {"auth": auth}


def by_name(name: str, password: str, project: str = "team-a") -> dict[str, Any]:
    return password_body(
        {"name": name, "domain": DEFAULT}, password, {"name": project, "domain": DEFAULT}
    )


def token_body(token: str, scope: dict[str, Any] | None = None) -> dict[str, Any]:
    auth: dict[str, Any] = {"identity": {"methods": ["token"], "token": {"id": token}}}
    if scope is not None:
        auth["scope"] = {"project": scope}
    return {"auth": auth}


def keystone_error(response: Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body  # never FastAPI's {"detail": ...}
    assert body["error"]["code"] == status
    assert body["error"]["title"]
    return str(body["error"]["message"])


@contextmanager
def make_world(tmp_path: Path, **settings: Any) -> Iterator[World]:
    config = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'api.db'}", **settings)
    store = Store(config.store_url)
    store.migrate()
    admin = iam.ensure_admin(store, None)
    assert admin
    with TestClient(create_app(Platform(store, config))) as client:
        auth = {"Authorization": f"Bearer {admin}"}
        client.post("/v1/projects", json={"name": "team-a"}, headers=auth)
        other = client.post("/v1/projects", json={"name": "team-b"}, headers=auth).json()
        yield World(client, store, admin, other["token"])
    store.dispose()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with make_world(tmp_path) as made:
        yield made


# -- users -----------------------------------------------------------------------------------
def test_users_are_created_listed_and_deleted_by_an_admin(world: World) -> None:
    alice = world.user("alice")
    assert {alice["name"], alice["project"], alice["role"]} == {"alice", "team-a", "member"}
    assert len(alice["password"]) >= 32  # generated, shown once
    bob = world.user("bob", role="reader", password="correct horse battery")
    assert bob["password"] is None  # a given password is never echoed
    world.user("alice", project="team-b")  # a name is unique per project only

    listed = world.call("GET", "/v1/users", world.admin).json()
    assert [(u["project"], u["name"]) for u in listed] == [
        ("team-a", "alice"),
        ("team-a", "bob"),
        ("team-b", "alice"),
    ]
    assert all("password" not in u for u in listed)
    only_b = world.call("GET", "/v1/users", world.admin, params={"project": "team-b"}).json()
    assert [u["name"] for u in only_b] == ["alice"]

    gone = world.call("DELETE", "/v1/projects/team-a/users/bob", world.admin)
    assert gone.status_code == 204
    names = [u["name"] for u in world.call("GET", "/v1/users", world.admin).json()]
    assert names == ["alice", "alice"]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/projects/team-a/users", {"name": "alice"}, 409, "user_exists"),
        ("/v1/projects/nope/users", {"name": "carol"}, 404, "project_not_found"),
        ("/v1/projects/team-a/users", {"name": "carol", "role": "owner"}, 422, "invalid_input"),
        ("/v1/projects/team-a/users", {"name": "carol", "role": "admin"}, 422, "role_not_allowed"),
        ("/v1/projects/team-a/users", {"name": "Carol!"}, 422, "invalid_input"),
        ("/v1/projects/team-a/users", {"name": "carol", "password": "short"}, 422, "invalid_input"),
    ],
)
def test_bad_user_requests_get_clear_errors_and_make_nothing(
    world: World, path: str, body: dict[str, Any], status: int, code: str
) -> None:
    world.user("alice")
    response = world.call("POST", path, world.admin, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert len(world.call("GET", "/v1/users", world.admin).json()) == 1


def test_only_an_admin_manages_users(world: World) -> None:
    for method, path, body in (
        ("GET", "/v1/users", None),
        ("POST", "/v1/projects/team-b/users", {"name": "mallory"}),
        ("DELETE", "/v1/projects/team-b/users/x", None),
    ):
        refused = world.call(method, path, world.other, json=body)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "admin_required"
    unknown = world.call("DELETE", "/v1/projects/team-a/users/nobody", world.admin)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "user_not_found")


def test_an_admin_user_of_the_admin_project_gets_an_admin_token(world: World) -> None:
    root = world.user("root", project="admin", role="admin")
    made = world.sign_in(by_name("root", root["password"], project="admin"))
    assert made.status_code == 201, made.text
    names = [r["name"] for r in made.json()["token"]["roles"]]
    assert names == ["admin", "member", "reader"]
    token = made.headers["X-Subject-Token"]
    assert world.call("GET", "/v1/projects", token).status_code == 200


def test_the_password_is_kept_only_as_an_argon2id_hash(world: World) -> None:
    world.user("bob", password="correct horse battery")
    with world.store.session() as s:
        row = s.scalars(select(User).where(User.name == "bob")).one()
        assert row.password_hash.startswith("$argon2id$")
        stored = " ".join(str(getattr(row, c.key)) for c in User.__table__.columns)
    assert "correct horse battery" not in stored


# -- discovery -------------------------------------------------------------------------------
def test_version_discovery(world: World) -> None:
    root = world.client.get("/identity")
    assert root.status_code == 300
    (v3,) = root.json()["versions"]["values"]
    assert (v3["id"], v3["status"]) == ("v3.14", "stable")
    assert v3["links"] == [{"rel": "self", "href": "http://testserver/identity/v3/"}]
    for path in ("/identity/v3", "/identity/v3/"):
        one = world.client.get(path)
        assert one.status_code == 200
        assert one.json()["version"] == v3


# -- the password method ---------------------------------------------------------------------
def test_a_password_sign_in_gives_a_token_and_its_catalog(world: World) -> None:
    alice = world.user("alice")
    made = world.sign_in(by_name("alice", alice["password"]))
    assert made.status_code == 201, made.text
    secret = made.headers["X-Subject-Token"]
    assert secret.startswith("onep_")
    token = made.json()["token"]
    project = world.call("GET", "/v1/whoami", secret).json()["project"]
    domain = {"id": "default", "name": "Default"}
    assert token["project"] == {**project, "domain": domain}
    assert token["user"]["id"] == alice["id"]
    assert (token["user"]["name"], token["user"]["domain"]) == ("alice", domain)
    assert token["methods"] == ["password"]
    assert [r["name"] for r in token["roles"]] == ["member", "reader"]
    assert len(token["audit_ids"]) == 1 and token["audit_ids"][0]
    issued = dt.datetime.fromisoformat(token["issued_at"])
    expires = dt.datetime.fromisoformat(token["expires_at"])
    assert token["expires_at"].endswith("Z") and expires - issued == dt.timedelta(hours=1)

    (database,) = [s for s in token["catalog"] if s["type"] == "database"]
    url = f"http://testserver/v1.0/{project['id']}"
    assert {
        (e["interface"], e["url"], e["region_id"], e["region"]) for e in database["endpoints"]
    } == {
        ("public", url, "RegionOne", "RegionOne"),
        ("internal", url, "RegionOne", "RegionOne"),
    }


def test_a_user_and_project_may_be_given_by_id(world: World) -> None:
    alice = world.user("alice")
    first = world.sign_in(by_name("alice", alice["password"])).json()["token"]
    body = password_body({"id": alice["id"]}, alice["password"], {"id": first["project"]["id"]})
    again = world.sign_in(body)
    assert again.status_code == 201, again.text
    assert again.json()["token"]["user"]["id"] == alice["id"]
    assert (
        again.headers["X-Subject-Token"]
        != world.sign_in(by_name("alice", alice["password"])).headers["X-Subject-Token"]
    )


def test_wrong_credentials_and_scopes_get_the_same_401(world: World) -> None:
    alice = world.user("alice")
    world.user("bob", project="team-b", password="bobs-password-1")
    pw = alice["password"]
    user = {"name": "alice", "domain": DEFAULT}
    refused = {
        "bad password": by_name("alice", pw + "x"),
        "unknown user": by_name("nobody", pw),
        "another project": by_name("alice", pw, project="team-b"),
        "a user of another project": by_name("bob", "bobs-password-1"),
        "unknown project": by_name("alice", pw, project="nope"),
        "unscoped": password_body(user, pw, None),
        "another domain": password_body({"name": "alice", "domain": {"name": "Other"}}, pw, None),
        "a project of another domain": password_body(
            user, pw, {"name": "team-a", "domain": {"id": "other"}}
        ),
        "domain scope": {
            "auth": {**password_body(user, pw, None)["auth"], "scope": {"domain": DEFAULT}}
        },
        "the unscoped keyword": {
            "auth": {**password_body(user, pw, None)["auth"], "scope": "unscoped"}
        },
        "an unknown method": {"auth": {"identity": {"methods": ["totp"]}}},
    }
    before = world.tokens()
    for what, body in refused.items():
        response = world.sign_in(body)
        assert response.status_code == 401, f"{what}: {response.text}"
        keystone_error(response, 401)
        assert "X-Subject-Token" not in response.headers, what
        assert response.headers["WWW-Authenticate"].startswith("Keystone uri="), what
    assert world.tokens() == before
    same = {keystone_error(world.sign_in(refused[w]), 401) for w in list(refused)[:5]}
    assert same == {AUTH_FAILED}  # nothing tells which users or projects exist


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"auth": {}}',
        b'{"auth": {"identity": {"methods": []}}}',
        b'{"auth": {"identity": {"methods": ["password"]}, "scope": {"project": {"id": "x"}}}}',
        b'{"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "a",'
        b' "password": "p"}}}, "scope": {"project": {"id": "x"}}}}',  # a name needs its domain
        b'{"auth": {"identity": {"methods": ["token"]}}}',
    ],
)
def test_malformed_bodies_get_400_in_keystones_format(world: World, body: bytes) -> None:
    response = world.client.post(
        "/identity/v3/auth/tokens", content=body, headers={"Content-Type": "application/json"}
    )
    keystone_error(response, 400)


def test_what_the_facade_does_not_serve_is_404_in_keystones_format(world: World) -> None:
    for method, path in (("GET", "/identity/v3/users"), ("GET", "/identity/v3/auth/tokens")):
        keystone_error(world.client.request(method, path), 404)


def test_the_password_is_never_logged(world: World, caplog: pytest.LogCaptureFixture) -> None:
    alice = world.user("alice", password="a-very-secret-word")
    caplog.set_level(logging.DEBUG)
    world.sign_in(by_name("alice", "a-very-secret-word"))
    world.sign_in(by_name("alice", "another-secret-word"))
    world.client.post(
        "/identity/v3/auth/tokens",
        json={
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {"user": {"password": "third-secret-word"}},
                }
            }
        },
    )
    assert alice and not any(
        word in caplog.text for word in ("a-very-secret", "another-secret", "third-secret")
    )


# -- the token method ------------------------------------------------------------------------
def test_the_token_method_gives_a_new_token_of_the_same_project(world: World) -> None:
    alice = world.user("alice")
    first = world.sign_in(by_name("alice", alice["password"]))
    old = first.headers["X-Subject-Token"]
    project = first.json()["token"]["project"]
    made = world.sign_in(token_body(old))
    assert made.status_code == 201, made.text
    new = made.headers["X-Subject-Token"]
    assert new != old
    token = made.json()["token"]
    assert (token["methods"], token["user"]["id"], token["project"]) == (
        ["token"],
        alice["id"],
        project,
    )
    assert token["expires_at"] <= first.json()["token"]["expires_at"]  # never outlives it
    assert world.call("GET", "/v1/whoami", new).json()["project"]["id"] == project["id"]
    scoped = world.sign_in(token_body(old, {"name": "team-a", "domain": DEFAULT}))
    assert scoped.status_code == 201

    keystone_error(world.sign_in(token_body(old, {"name": "team-b", "domain": DEFAULT})), 401)
    keystone_error(world.sign_in(token_body("onep_not-a-token")), 401)


def test_a_platform_token_may_be_exchanged_too(world: World) -> None:
    made = world.sign_in(token_body(world.other))
    assert made.status_code == 201, made.text
    token = made.json()["token"]
    assert token["project"]["name"] == "team-b"
    assert token["user"]["name"] == "team-b-member"


def test_a_short_lifetime_is_honoured(tmp_path: Path) -> None:
    with make_world(tmp_path, identity_token_seconds=60) as world:
        _short_lifetime(world)


def _short_lifetime(world: World) -> None:
    alice = world.user("alice")
    made = world.sign_in(by_name("alice", alice["password"]))
    token = made.json()["token"]
    lifetime = dt.datetime.fromisoformat(token["expires_at"]) - dt.datetime.fromisoformat(
        token["issued_at"]
    )
    assert lifetime == dt.timedelta(seconds=60)
    secret = made.headers["X-Subject-Token"]
    assert world.call("GET", "/v1/whoami", secret).status_code == 200
    with world.store.session() as s:  # a minute later
        s.execute(
            update(Token)
            .where(Token.token_hash == iam.hash_token(secret))
            .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    expired = world.call("GET", "/v1/whoami", secret)
    assert (expired.status_code, expired.json()["error"]["code"]) == (401, "token_expired")
    keystone_error(world.sign_in(token_body(secret)), 401)


# -- what a user's token may do --------------------------------------------------------------
def test_a_users_token_reaches_its_own_project_only(world: World) -> None:
    alice = world.user("alice")
    secret = world.sign_in(by_name("alice", alice["password"])).headers["X-Subject-Token"]
    theirs = world.call("POST", "/v1/tokens", world.other, json={"name": "b-ci"})
    assert theirs.status_code == 201
    names = [t["name"] for t in world.call("GET", "/v1/tokens", secret).json()]
    assert "b-ci" not in names and any(n.startswith("alice-ks-") for n in names)
    assert world.call("DELETE", "/v1/tokens/b-ci", secret).status_code == 404
    assert world.call("GET", "/v1/projects/team-b/quota", secret).status_code == 403
    assert world.call("GET", "/v1/projects", secret).status_code == 403  # not an admin
    assert world.call("POST", "/v1/tokens", secret, json={"name": "mine"}).status_code == 201


def test_a_reader_users_token_cannot_write(world: World) -> None:
    reader = world.user("rita", role="reader")
    made = world.sign_in(by_name("rita", reader["password"]))
    assert [r["name"] for r in made.json()["token"]["roles"]] == ["reader"]
    secret = made.headers["X-Subject-Token"]
    assert world.call("GET", "/v1/db/instances", secret).status_code == 200
    refused = world.call("POST", "/v1/tokens", secret, json={"name": "mine"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "read_only")
    exchanged = world.sign_in(token_body(secret))  # the token method keeps the role
    assert [r["name"] for r in exchanged.json()["token"]["roles"]] == ["reader"]


def test_deleting_a_user_ends_its_tokens(world: World) -> None:
    alice = world.user("alice")
    secret = world.sign_in(by_name("alice", alice["password"])).headers["X-Subject-Token"]
    assert world.call("DELETE", "/v1/projects/team-a/users/alice", world.admin).status_code == 204
    revoked = world.call("GET", "/v1/whoami", secret)
    assert (revoked.status_code, revoked.json()["error"]["code"]) == (401, "token_revoked")
    keystone_error(world.sign_in(by_name("alice", alice["password"])), 401)


def test_tokens_a_user_made_end_with_the_user(world: World) -> None:
    alice = world.user("alice")
    secret = world.sign_in(by_name("alice", alice["password"])).headers["X-Subject-Token"]
    made = world.call("POST", "/v1/tokens", secret, json={"name": "alice-ci"})
    assert made.status_code == 201, made.text
    ci = made.json()["token"]
    again = world.call("POST", "/v1/tokens", ci, json={"name": "alice-ci-2"}).json()["token"]
    plain = world.call("POST", "/v1/tokens", world.other, json={"name": "b-ci"}).json()["token"]
    assert world.call("DELETE", "/v1/projects/team-a/users/alice", world.admin).status_code == 204
    for gone in (ci, again):
        refused = world.call("GET", "/v1/whoami", gone)
        assert (refused.status_code, refused.json()["error"]["code"]) == (401, "token_revoked")
    assert world.call("GET", "/v1/whoami", plain).status_code == 200  # no user: not touched


def test_sign_ins_expired_over_a_day_ago_are_deleted(world: World) -> None:
    alice = world.user("alice")
    old = world.sign_in(by_name("alice", alice["password"])).headers["X-Subject-Token"]
    recent = world.sign_in(by_name("alice", alice["password"])).headers["X-Subject-Token"]
    kept = world.call("POST", "/v1/tokens", world.admin, json={"name": "x-ks-y"}).json()["token"]
    now = dt.datetime.now(dt.UTC)
    with world.store.session() as s:
        for secret, ago in ((old, dt.timedelta(days=2)), (recent, dt.timedelta(hours=2))):
            s.execute(
                update(Token)
                .where(Token.token_hash == iam.hash_token(secret))
                .values(expires_at=now - ago)
            )
        s.execute(  # an expired token of another project, named like a sign-in
            update(Token)
            .where(Token.token_hash == iam.hash_token(kept))
            .values(expires_at=now - dt.timedelta(days=3))
        )
    before = world.tokens()
    assert world.sign_in(by_name("alice", alice["password"])).status_code == 201
    with world.store.session() as s:
        hashes = set(s.scalars(select(Token.token_hash)))
    assert iam.hash_token(old) not in hashes
    assert {iam.hash_token(recent), iam.hash_token(kept)} <= hashes
    assert world.tokens() == before  # one deleted, one issued


def test_the_catalog_uses_the_public_url_when_set(tmp_path: Path) -> None:
    with make_world(tmp_path, public_url="https://db.example.com:8443/onep") as world:
        _public_url(world)


def _public_url(world: World) -> None:
    alice = world.user("alice")
    token = world.sign_in(by_name("alice", alice["password"])).json()["token"]
    (database,) = [s for s in token["catalog"] if s["type"] == "database"]
    want = f"https://db.example.com:8443/onep/v1.0/{token['project']['id']}"
    assert {e["url"] for e in database["endpoints"]} == {want}
    href = world.client.get("/identity").json()["versions"]["values"][0]["links"][0]["href"]
    assert href == "https://db.example.com:8443/onep/identity/v3/"


def test_odd_input_is_refused_not_a_server_error(store: Store, tmp_path: Path) -> None:
    """On both stores (PostgreSQL refuses NUL in text): NUL and overlong names are a 400 of
    Keystone's, or a 404 of the users API, never a 500."""
    admin = iam.ensure_admin(store, None)
    auth = {"Authorization": f"Bearer {admin}"}
    with TestClient(create_app(Platform(store, Settings(home=tmp_path)))) as client:
        for body in (
            by_name("a\x00b", "a-password", project="admin"),
            by_name("alice", "a-password", project="adm\x00in"),
            password_body({"id": "x\x00"}, "a-password", {"id": "y"}),
            by_name("a" * 300, "a-password"),
            token_body("onep_\x00"),
        ):
            keystone_error(client.post("/identity/v3/auth/tokens", json=body), 400)
        listed = client.get("/v1/users", params={"project": "a\x00"}, headers=auth)
        assert (listed.status_code, listed.json()["error"]["code"]) == (404, "project_not_found")
        gone = client.delete("/v1/projects/admin/users/a%00b", headers=auth)
        assert (gone.status_code, gone.json()["error"]["code"]) == (404, "user_not_found")
        made = client.post("/v1/projects/adm%00in/users", json={"name": "x"}, headers=auth)
        assert (made.status_code, made.json()["error"]["code"]) == (404, "project_not_found")
