"""The web dashboard in-process: tickets, sessions, CSRF, roles and project isolation.

The pages run on the fake compute of ``world``; the browser test (tests/e2e/test_dashboard.py)
drives the real platform in headless Chromium.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from oneplatform import iam
from oneplatform.api.app import create_app
from oneplatform.api.deps import Platform
from oneplatform.iam import MEMBER, READER, Caller
from oneplatform.schemas.projects import TokenCreate
from oneplatform.store.models import DbInstance, Operation, UiSession, utcnow
from oneplatform.ui.pages import COOKIE
from tests.factories import caller_for, make_project
from tests.world import World

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Dash:
    world: World
    client: TestClient
    member: str  # API tokens of world.member's project, another project's member, a reader
    other: str
    reader: str

    def ticket(self, token: str) -> dict[str, str]:
        response = self.client.post("/v1/ui/tickets", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 201, response.text
        body: dict[str, str] = response.json()
        return body

    def log_in(self, token: str) -> str:
        """A fresh session for ``token`` (the client's cookie); its CSRF token."""
        self.client.cookies.clear()
        response = self.client.get(self.ticket(token)["login_path"], follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/ui/databases"
        return _csrf(self.client.get("/ui/databases"))

    def db_rows(self) -> int:
        with self.world.store.session() as session:
            return session.scalar(select(func.count()).select_from(DbInstance)) or 0


def _csrf(page: httpx.Response) -> str:
    assert page.status_code == 200, page.text
    found = CSRF.search(page.text)
    assert found, page.text
    return found.group(1)


def _code(response: httpx.Response) -> str:
    found = re.search(r'data-code="([a-z_]+)"', response.text)
    assert found, response.text
    return found.group(1)


def _token(dash_world: World, caller: Caller, name: str, role: str) -> str:
    return iam.create_token(dash_world.store, caller, TokenCreate(name=name, role=role)).token


@pytest.fixture
def dash(world: World) -> Iterator[Dash]:
    with world.store.session() as session:
        other = caller_for(make_project(session), MEMBER)
    member = _token(world, world.member, "ui-member", MEMBER)
    reader = _token(world, world.member, "ui-reader", READER)
    other_token = _token(world, other, "ui-other", MEMBER)
    with TestClient(create_app(Platform(world.store, world.settings))) as client:
        yield Dash(world, client, member, other_token, reader)


# -- tickets and sessions ----------------------------------------------------------------------
def test_a_ticket_is_exchanged_once_for_a_strict_httponly_session(dash: Dash) -> None:
    ticket = dash.ticket(dash.member)
    assert ticket["login_path"] == f"/ui/login?ticket={ticket['ticket']}"
    left = dt.datetime.fromisoformat(ticket["expires_at"]) - utcnow()
    assert dt.timedelta(seconds=60) < left <= dt.timedelta(minutes=2)
    with dash.world.store.session() as session:  # stored hashed, never as it is
        assert session.scalar(
            select(func.count()).where(UiSession.secret_hash == iam.hash_token(ticket["ticket"]))
        )
        assert not session.scalar(
            select(func.count()).where(UiSession.secret_hash == ticket["ticket"])
        )

    entered = dash.client.get(ticket["login_path"], follow_redirects=False)
    assert entered.status_code == 303
    cookie = entered.headers["set-cookie"].lower()
    assert f"{COOKIE}=" in cookie and "httponly" in cookie
    assert "samesite=strict" in cookie and "path=/ui" in cookie
    page = dash.client.get("/ui/databases")
    assert page.status_code == 200 and "content-security-policy" in page.headers

    dash.client.cookies.clear()
    again = dash.client.get(ticket["login_path"], follow_redirects=False)
    assert again.status_code == 401 and _code(again) == "ticket_invalid"
    assert COOKIE not in again.headers.get("set-cookie", "")


def test_an_expired_ticket_is_refused(dash: Dash) -> None:
    ticket = dash.ticket(dash.member)
    with dash.world.store.session() as session:
        session.execute(update(UiSession).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    response = dash.client.get(ticket["login_path"], follow_redirects=False)
    assert response.status_code == 401 and _code(response) == "ticket_invalid"


def test_a_ticket_needs_a_token(dash: Dash) -> None:
    response = dash.client.post("/v1/ui/tickets")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_missing"


def test_pages_without_a_session_go_to_the_login_form(dash: Dash) -> None:
    for path in ("/ui/databases", "/ui/operations", "/ui/infrastructure", "/ui/catalog"):
        response = dash.client.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/ui/login"
    assert dash.client.get("/ui/databases?live=1").status_code == 401  # the script re-logs in
    dash.client.cookies.set(COOKIE, "forged", path="/ui")
    response = dash.client.get("/ui/databases", follow_redirects=False)
    assert response.status_code == 303


def test_the_login_form_takes_an_api_token(dash: Dash) -> None:
    bad = dash.client.post("/ui/login", data={"token": "onep_nope"}, follow_redirects=False)
    assert bad.status_code == 401 and _code(bad) == "token_invalid"
    good = dash.client.post("/ui/login", data={"token": dash.member}, follow_redirects=False)
    assert good.status_code == 303
    page = dash.client.get("/ui/databases")
    assert page.status_code == 200 and dash.world.member.project_name in page.text


def test_logout_and_a_revoked_token_end_the_session(dash: Dash) -> None:
    csrf = dash.log_in(dash.member)
    stale = dict(dash.client.cookies)
    refused = dash.client.post("/ui/logout", data={"csrf": "wrong"})
    assert refused.status_code == 403 and _code(refused) == "csrf_invalid"
    out = dash.client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    dash.client.cookies.update(stale)  # the old cookie is dead on the server too
    assert dash.client.get("/ui/databases", follow_redirects=False).status_code == 303

    dash.log_in(dash.member)
    iam.revoke_token(dash.world.store, dash.world.member, "ui-member")
    assert dash.client.get("/ui/databases", follow_redirects=False).status_code == 303


# -- forms ---------------------------------------------------------------------------------------
def _create_form(csrf: str, name: str = "pg-ui") -> dict[str, str]:
    return {
        "csrf": csrf,
        "name": name,
        "engine": "postgresql:15",
        "flavor": "container.small",
        "size_gb": "1",
        "database": "appdb",
        "user": "alice",
        "password": "S3cret-pass",
    }


def test_create_needs_the_sessions_csrf_token(dash: Dash) -> None:
    csrf = dash.log_in(dash.member)
    for wrong in ("", "x" * 43):
        form = {**_create_form(csrf), "csrf": wrong}
        response = dash.client.post("/ui/databases", data=form)
        assert response.status_code == 403 and _code(response) == "csrf_invalid"
    other_csrf = dash.log_in(dash.other)  # another session's token is no good either
    dash.log_in(dash.member)
    response = dash.client.post("/ui/databases", data=_create_form(other_csrf))
    assert response.status_code == 403 and _code(response) == "csrf_invalid"
    assert dash.db_rows() == 0


def test_bad_input_is_a_4xx_with_a_code_and_writes_nothing(dash: Dash) -> None:
    csrf = dash.log_in(dash.member)
    cases = [
        ({"name": "Bad_Name"}, 422, "invalid_input"),
        ({"size_gb": "lots"}, 422, "invalid_input"),
        ({"flavor": "no.such"}, 404, "flavor_not_found"),
        ({"engine": "oracle:23"}, 404, "datastore_not_found"),
    ]
    for change, status, code in cases:
        response = dash.client.post("/ui/databases", data={**_create_form(csrf), **change})
        assert (response.status_code, _code(response)) == (status, code), change
    assert dash.db_rows() == 0


def test_a_reader_sees_but_cannot_change(dash: Dash) -> None:
    dash.world.create_db("pg-seen")
    csrf = dash.log_in(dash.reader)
    page = dash.client.get("/ui/databases")
    assert 'data-db="pg-seen"' in page.text and 'id="create-database"' not in page.text
    response = dash.client.post("/ui/databases", data=_create_form(csrf))
    assert response.status_code == 403 and _code(response) == "read_only"
    response = dash.client.post("/ui/databases/pg-seen/delete", data={"csrf": csrf})
    assert response.status_code == 403 and _code(response) == "read_only"
    assert dash.db_rows() == 1


def test_create_watch_and_delete_through_the_pages(dash: Dash) -> None:
    csrf = dash.log_in(dash.member)
    created = dash.client.post("/ui/databases", data=_create_form(csrf), follow_redirects=False)
    assert created.status_code == 303 and created.headers["location"] == "/ui/databases/pg-ui"
    live = dash.client.get("/ui/databases/pg-ui?live=1")
    assert "s-build" in live.text and "<html" not in live.text  # the live part alone
    dash.world.drive_all()
    live = dash.client.get("/ui/databases/pg-ui?live=1")
    assert '<span class="status s-active">ACTIVE</span>' in live.text
    assert "step-done" in live.text and "step-pending" not in live.text  # step by step
    row = dash.client.get("/ui/databases?live=1").text
    assert 'data-db="pg-ui"' in row and "s-active" in row

    deleted = dash.client.post(
        "/ui/databases/pg-ui/delete", data={"csrf": csrf}, follow_redirects=False
    )
    assert deleted.status_code == 303 and deleted.headers["location"] == "/ui/databases"
    dash.world.drive_all()
    assert 'data-db="pg-ui"' not in dash.client.get("/ui/databases?live=1").text
    gone = dash.client.get("/ui/databases/pg-ui?live=1")
    assert gone.status_code == 200 and "is gone" in gone.text


# -- isolation -----------------------------------------------------------------------------------
def test_a_member_never_sees_another_projects_database(dash: Dash) -> None:
    db_id = dash.world.create_db("pg-theirs")
    with dash.world.store.session() as session:
        op_ids = list(session.scalars(select(Operation.id).where(Operation.resource_id == db_id)))
    assert op_ids
    csrf = dash.log_in(dash.other)
    pages = [
        dash.client.get(path).text
        for path in (
            "/ui/databases",
            "/ui/databases?live=1",
            "/ui/operations",
            "/ui/operations?live=1",
            "/ui/infrastructure",
        )
    ]
    for text in pages:
        assert "pg-theirs" not in text and db_id not in text
        assert not any(op_id[:8] in text for op_id in op_ids)
    shown = dash.client.get("/ui/databases/pg-theirs")
    assert shown.status_code == 404 and _code(shown) == "db_instance_not_found"
    for action in ("delete", "restart"):
        response = dash.client.post(f"/ui/databases/pg-theirs/{action}", data={"csrf": csrf})
        assert response.status_code == 404 and _code(response) == "db_instance_not_found"
    with dash.world.store.session() as session:
        assert session.get_one(DbInstance, db_id).status == "BUILD"  # untouched


def test_pools_hosts_and_nodes_are_for_an_admin(dash: Dash) -> None:
    dash.log_in(dash.member)
    page = dash.client.get("/ui/infrastructure").text
    assert 'data-pool="containers"' not in page and 'data-host="container-host"' not in page
    admin = _token(dash.world, dash.world.admin, "ui-admin", "admin")
    dash.log_in(admin)
    page = dash.client.get("/ui/infrastructure").text
    assert 'data-pool="containers"' in page and 'data-host="container-host"' in page
    assert "<meter" in page


def test_the_catalog_says_what_each_compute_type_cannot_do_and_why(dash: Dash) -> None:
    dash.log_in(dash.member)
    page = dash.client.get("/ui/catalog").text
    assert 'data-compute-type="container"' in page and 'data-datastore="postgresql"' in page
    assert '<li class="no"' in page and "<small>" in page  # a "no", with its reason


def test_what_the_pages_show_is_escaped(dash: Dash) -> None:
    db_id = dash.world.create_db("pg-x")
    with dash.world.store.session() as session:
        session.get_one(DbInstance, db_id).status_message = "<script>alert(1)</script>"
    dash.log_in(dash.member)
    for path in ("/ui/databases", "/ui/databases/pg-x"):
        text = dash.client.get(path).text
        assert "<script>alert(1)" not in text and "&lt;script&gt;alert(1)" in text
