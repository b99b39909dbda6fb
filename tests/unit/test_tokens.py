"""API tokens: they expire, can be listed, created and revoked per project, never with more
than the caller's role; a reader only reads; the admin token is rotated, not duplicated."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from oneplatform import iam
from oneplatform.api.app import create_app
from oneplatform.api.deps import Platform
from oneplatform.config import Settings
from oneplatform.store.db import Store
from oneplatform.store.models import Token, utcnow


class Tokens:
    def __init__(self, client: TestClient, store: Store, admin: str, member: str) -> None:
        self.client, self.store, self.admin, self.member = client, store, admin, member

    def call(self, method: str, path: str, token: str, **kwargs: object):  # type: ignore[no-untyped-def]
        return self.client.request(
            method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs
        )

    def create(self, token: str, name: str, **body: object) -> dict:  # type: ignore[type-arg]
        response = self.call("POST", "/v1/tokens", token, json={"name": name, **body})
        assert response.status_code == 201, response.text
        return response.json()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Tokens]:
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'api.db'}")
    store = Store(settings.store_url)
    store.migrate()
    admin = iam.ensure_admin(store, None)
    assert admin
    with TestClient(create_app(Platform(store, settings))) as client:
        created = client.post(
            "/v1/projects", json={"name": "team-a"}, headers={"Authorization": f"Bearer {admin}"}
        )
        yield Tokens(client, store, admin, created.json()["token"])
    store.dispose()


def test_create_list_and_revoke(api: Tokens) -> None:
    created = api.create(api.member, "ci", role="reader", expires_in_s=3600)
    assert created["token"].startswith("onep_") and created["role"] == "reader"
    expires = dt.datetime.fromisoformat(created["expires_at"])
    assert dt.timedelta(minutes=59) < expires - utcnow() <= dt.timedelta(hours=1)
    listed = api.call("GET", "/v1/tokens", api.member).json()
    assert [t["name"] for t in listed] == ["team-a-member", "ci"]
    assert all("token" not in t for t in listed)  # never the secret again
    assert api.call("GET", "/v1/whoami", created["token"]).json()["role"] == "reader"
    assert api.call("DELETE", "/v1/tokens/ci", api.member).status_code == 204
    refused = api.call("GET", "/v1/whoami", created["token"])
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "token_revoked")
    assert [t["name"] for t in api.call("GET", "/v1/tokens", api.member).json()] == [
        "team-a-member"
    ]
    api.create(api.member, "ci")  # a revoked name is free again


def test_an_expired_token_is_refused(api: Tokens) -> None:
    token = api.create(api.member, "short")["token"]
    with api.store.session() as session:
        session.execute(update(Token).where(Token.name == "short").values(expires_at=utcnow()))
    refused = api.call("GET", "/v1/whoami", token)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "token_expired")


def test_a_reader_only_reads(api: Tokens) -> None:
    reader = api.create(api.member, "dash", role="reader")["token"]
    assert api.call("GET", "/v1/instances", reader).status_code == 200
    body = {"name": "x1", "flavor": "container.small", "image": "postgresql-15"}
    refused = api.call("POST", "/v1/instances", reader, json=body)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "read_only")
    refused = api.call("POST", "/v1/tokens", reader, json={"name": "more"})
    assert refused.status_code == 403


def test_no_token_with_more_than_the_callers_role(api: Tokens) -> None:
    refused = api.call("POST", "/v1/tokens", api.member, json={"name": "x", "role": "admin"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "role_too_high")


def test_names_are_unique_and_projects_see_only_their_own(api: Tokens) -> None:
    api.create(api.member, "ci")
    again = api.call("POST", "/v1/tokens", api.member, json={"name": "ci"})
    assert (again.status_code, again.json()["error"]["code"]) == (409, "token_exists")
    admins = [t["name"] for t in api.call("GET", "/v1/tokens", api.admin).json()]
    assert "ci" not in admins
    other = api.call("DELETE", "/v1/tokens/ci", api.admin)
    assert (other.status_code, other.json()["error"]["code"]) == (404, "token_not_found")


def test_the_admin_token_is_rotated_not_duplicated(api: Tokens) -> None:
    assert iam.ensure_admin(api.store, api.admin) is None  # live and far from expiry: kept
    with api.store.session() as session:
        session.execute(
            update(Token)
            .where(Token.name == "admin")
            .values(expires_at=utcnow() + dt.timedelta(days=2))
        )
    rotated = iam.ensure_admin(api.store, api.admin)
    assert rotated is not None and rotated != api.admin
    with api.store.session() as session:
        admins = session.scalars(select(Token).where(Token.name == "admin")).all()
        assert sum(1 for t in admins if t.revoked_at is None) == 1
    assert api.call("GET", "/v1/whoami", api.admin).status_code == 401
    assert api.call("GET", "/v1/whoami", rotated).json()["role"] == "admin"
