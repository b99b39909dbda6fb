"""OpenStack's own clients sign in to the Keystone facade: keystoneauth1, openstacksdk and
python-openstackclient (the versions pinned in pyproject) against the application served by
a real uvicorn on 127.0.0.1. No compute is involved: they get a token and the catalog's
database endpoint, and the token works on the platform's API. The user is made with
`onep user create` (the CLI, through the SDK, over HTTP)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openstack
import pytest
import uvicorn
from keystoneauth1 import session as ks_session
from keystoneauth1.exceptions import Unauthorized as KeystoneUnauthorized
from keystoneauth1.identity import v3
from typer.testing import CliRunner

from oneplatform import iam
from oneplatform.api.app import create_app
from oneplatform.api.deps import Platform
from oneplatform.cli.main import app as cli
from oneplatform.config import Settings
from oneplatform.store.db import Store

PROJECT = "team-a"


@dataclass
class Served:
    url: str
    admin: str
    project_id: str
    password: str
    home: Path

    def onep(self, *argv: str, stdin: str | None = None) -> Any:
        """Run the CLI (in this process) against the server, as the admin."""
        env = {"ONEP_URL": self.url, "ONEP_TOKEN": self.admin, "ONEP_HOME": str(self.home)}
        return CliRunner().invoke(cli, list(argv), env=env, input=stdin)

    @property
    def auth_url(self) -> str:
        return f"{self.url}/identity"

    @property
    def database_url(self) -> str:
        return f"{self.url}/v1.0/{self.project_id}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home: Path = tmp_path_factory.mktemp("identity")
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'store.db'}")
    store = Store(settings.store_url)
    store.migrate()
    admin = iam.ensure_admin(store, None)
    assert admin
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held until uvicorn takes the socket
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(
        uvicorn.Config(create_app(Platform(store, settings)), log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        auth = {"Authorization": f"Bearer {admin}"}
        made = httpx.post(f"{url}/v1/projects", json={"name": PROJECT}, headers=auth)
        project_id = made.json()["project"]["id"]
        served = Served(url, admin, project_id, "", home)
        run = served.onep("user", "create", "alice", "--project", PROJECT, "-o", "json")
        assert run.exit_code == 0, run.output
        created = json.loads(run.output)
        assert {k: created[k] for k in ("name", "project", "role")} == {
            "name": "alice",
            "project": PROJECT,
            "role": "member",
        }
        served.password = created["password"]
        yield served
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        store.dispose()


def _password(served: Served, password: str | None = None) -> v3.Password:
    return v3.Password(
        auth_url=served.auth_url,
        username="alice",
        password=password or served.password,
        project_name=PROJECT,
        user_domain_name="Default",
        project_domain_name="Default",
    )


def _works_on_the_api(served: Served, token: str) -> None:
    whoami = httpx.get(f"{served.url}/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert whoami.status_code == 200, whoami.text
    assert whoami.json()["project"] == {"id": served.project_id, "name": PROJECT}


def test_keystoneauth_gets_a_token_and_the_database_endpoint(served: Served) -> None:
    sess = ks_session.Session(auth=_password(served))
    token = sess.get_token()
    assert token and token.startswith("onep_")
    assert sess.get_endpoint(service_type="database", interface="public") == served.database_url
    assert sess.get_endpoint(service_type="database", interface="internal") == served.database_url
    assert sess.get_project_id() == served.project_id
    _works_on_the_api(served, token)


def test_keystoneauth_is_refused_a_wrong_password(served: Served) -> None:
    sess = ks_session.Session(auth=_password(served, "not-the-password"))
    with pytest.raises(KeystoneUnauthorized):
        sess.get_token()


def test_keystoneauth_token_method_rescopes_a_token(served: Served) -> None:
    first = ks_session.Session(auth=_password(served)).get_token()
    assert first
    auth = v3.Token(
        auth_url=served.auth_url,
        token=first,
        project_name=PROJECT,
        project_domain_name="Default",
    )
    sess = ks_session.Session(auth=auth)
    second = sess.get_token()
    assert second and second != first
    assert sess.get_endpoint(service_type="database", interface="public") == served.database_url
    _works_on_the_api(served, second)


def test_openstacksdk_connects(served: Served) -> None:
    conn = openstack.connect(
        auth_url=served.auth_url,
        username="alice",
        password=served.password,
        project_name=PROJECT,
        user_domain_name="Default",
        project_domain_name="Default",
        load_yaml_config=False,
        load_envvars=False,
    )
    try:
        token = conn.authorize()
        assert conn.current_project_id == served.project_id
        endpoint = conn.session.get_endpoint(service_type="database", interface="public")
        assert endpoint == served.database_url
        assert conn.endpoint_for("database") == served.database_url
        _works_on_the_api(served, token)
    finally:
        conn.close()


def test_openstackclient_issues_a_token(served: Served, tmp_path: Path) -> None:
    """`openstack token issue` with a clouds.yaml like the one docs/openstack.md shows."""
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        "clouds:\n  onep:\n    auth:\n"
        f"      auth_url: {served.auth_url}\n"
        "      username: alice\n"
        f"      password: {served.password}\n"
        f"      project_name: {PROJECT}\n"
        "      user_domain_name: Default\n"
        "      project_domain_name: Default\n"
        "    identity_api_version: 3\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["OS_CLIENT_CONFIG_FILE"] = str(clouds)
    openstack_cli = Path(sys.executable).with_name("openstack")
    issued = subprocess.run(
        [str(openstack_cli), "--os-cloud", "onep", "token", "issue", "-f", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert issued.returncode == 0, issued.stderr
    token = json.loads(issued.stdout)
    assert token["project_id"] == served.project_id
    assert token["expires"]
    _works_on_the_api(served, token["id"])


def test_the_cli_manages_users(served: Served) -> None:
    """--password-stdin, list, delete, and the API's errors with their codes."""
    made = served.onep(
        "user",
        "create",
        "bob",
        "-p",
        PROJECT,
        "--role",
        "reader",
        "--password-stdin",
        "-o",
        "json",
        stdin="bobs-own-password\n",
    )
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["password"] is None  # given, so never printed

    def bob() -> v3.Password:  # a new plugin each time: a plugin keeps its token
        return v3.Password(
            auth_url=served.auth_url,
            username="bob",
            password="bobs-own-password",
            project_name=PROJECT,
            user_domain_name="Default",
            project_domain_name="Default",
        )

    assert ks_session.Session(auth=bob()).get_token()

    again = served.onep("user", "create", "bob", "-p", PROJECT, "--password-stdin", stdin="x" * 9)
    assert again.exit_code == 1 and "user_exists" in again.output
    nowhere = served.onep("user", "create", "carol", "-p", "nope")
    assert nowhere.exit_code == 1 and "project_not_found" in nowhere.output
    empty = served.onep("user", "create", "carol", "-p", PROJECT, "--password-stdin", stdin="")
    assert empty.exit_code == 2

    listed = json.loads(served.onep("user", "list", "--project", PROJECT, "-o", "json").output)
    assert [(u["name"], u["role"]) for u in listed] == [("alice", "member"), ("bob", "reader")]
    gone = served.onep("user", "delete", "bob", "--project", PROJECT)
    assert gone.exit_code == 0, gone.output
    with pytest.raises(KeystoneUnauthorized):
        ks_session.Session(auth=bob()).get_token()
    missing = served.onep("user", "delete", "bob", "--project", PROJECT)
    assert missing.exit_code == 1 and "user_not_found" in missing.output
