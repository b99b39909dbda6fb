"""The guest agent in the real postgresql-15 image under the real Podman.

The image is built with mmdebstrap (cached in ``ONEP_TEST_IMAGE_CACHE`` or the platform's
own image cache) and imported as test_image_build.py does; containers are run with podman
directly, the bundle delivered as a Podman secret mounted at /etc/oneplatform/bundle.json.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from oneplatform.config import Settings
from oneplatform.dbaas.agent_client import AgentClient, AgentHealth
from oneplatform.errors import BackendError, BackendUnavailable
from oneplatform.guest.bundle import (
    AdminCredentials,
    AgentSettings,
    Bundle,
    EngineSettings,
    generate_password,
    generate_secret,
)
from oneplatform.guest.contract import BUNDLE_GUEST_PATH
from oneplatform.guest.signing import sign_request
from oneplatform.images.artifacts import ImageArtifact
from oneplatform.images.builder import artifact_for, build_rootfs
from oneplatform.images.recipes import Recipe, load_recipe
from tests.integration.conftest import find_free_port, require_or_fail
from tests.podman import force_remove

pytestmark = pytest.mark.integration

READY_TIMEOUT = 90.0
LABEL = "oneplatform.test=guest-agent"
RUN_FLAGS = (
    "--pull=never",
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=4096:4096",
    "--label",
    LABEL,
)


def podman(
    *argv: str, input: str | None = None, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *argv], input=input, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        pytest.fail(f"podman {' '.join(argv[:2])} failed ({proc.returncode}): {proc.stderr}")
    return proc


class Resources:
    """Containers, volumes and secrets a test made; removed in a finalizer."""

    def __init__(self) -> None:
        self.containers: list[str] = []
        self.volumes: list[str] = []
        self.secrets: list[str] = []

    def cleanup(self) -> None:
        for name in self.containers:
            force_remove(name, check=False)
        for name in self.volumes:
            podman("volume", "rm", "-f", name, check=False)
        for name in self.secrets:
            podman("secret", "rm", name, check=False)


@pytest.fixture(scope="module")
def resources() -> Iterator[Resources]:
    made = Resources()
    yield made
    made.cleanup()


@pytest.fixture(scope="module")
def image(podman_available: None) -> ImageArtifact:
    require_or_fail(shutil.which("mmdebstrap"), "mmdebstrap is not installed (scripts/setup.sh)")
    recipe: Recipe = load_recipe("postgresql-15")
    cache_dir = Path(os.environ.get("ONEP_TEST_IMAGE_CACHE") or Settings().images_dir)
    started = time.monotonic()
    rootfs = build_rootfs(recipe, cache_dir)
    print(f"\nbuild_rootfs: {time.monotonic() - started:.1f} s ({rootfs.name})")
    artifact = artifact_for(recipe, cache_dir)
    if podman("image", "exists", artifact.ref, check=False).returncode != 0:
        # "CMD <json>", as the Podman driver writes it: with "CMD=<json>" podman 4.3 takes
        # everything up to the first space as the instruction ('invalid instruction').
        changes = ["--change", f"CMD {json.dumps(list(artifact.command))}"]
        for key, value in artifact.env.items():
            changes += ["--change", f"ENV {key}={value}"]
        started = time.monotonic()
        podman("import", *changes, str(rootfs), artifact.ref)
        print(f"podman import: {time.monotonic() - started:.1f} s")
    return artifact


@dataclass
class Running:
    name: str
    pg_port: int
    agent_port: int
    bundle: Bundle
    client: AgentClient


def wait_ready(client: AgentClient, timeout: float = READY_TIMEOUT) -> AgentHealth:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            health = client.health()
            if health.ready:
                return health
            last = health
        except BackendUnavailable as exc:
            last = exc
        time.sleep(0.1)
    pytest.fail(f"the agent did not report ready within {timeout:.0f} s: {last}")


def logs(name: str) -> str:
    proc = podman("logs", name, check=False)
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def running(image: ImageArtifact, resources: Resources) -> Running:
    suffix = uuid.uuid4().hex[:8]
    bundle = Bundle(
        instance_id=f"it-{uuid.uuid4().hex}",
        datastore="postgresql",
        version="15",
        agent=AgentSettings(secret=generate_secret()),
        engine=EngineSettings(
            port=5432, settings={"shared_buffers": "48MB", "max_connections": "40"}
        ),
        # Quotes and non-ASCII: the verifier (and SASLprep) must match what libpq does.
        admin=AdminCredentials(username="admin", password=f"p\u00e4'ss\"{generate_password()}"),
        platform=AdminCredentials(username="onep_platform", password=generate_password()),
    )
    secret_name, volume, name = (
        f"onep-test-bundle-{suffix}",
        f"onep-test-vol-{suffix}",
        f"onep-test-agent-{suffix}",
    )
    podman("secret", "create", secret_name, "-", input=bundle.to_json())
    resources.secrets.append(secret_name)
    podman("volume", "create", volume)
    resources.volumes.append(volume)
    pg_port, agent_port = find_free_port(), find_free_port()
    resources.containers.append(name)
    podman(
        "run",
        "-d",
        "--name",
        name,
        *RUN_FLAGS,
        "--secret",
        f"{secret_name},type=mount,target={BUNDLE_GUEST_PATH},mode=0400",
        "-v",
        f"{volume}:/var/lib/oneplatform",
        "-p",
        f"127.0.0.1:{pg_port}:5432",
        "-p",
        f"127.0.0.1:{agent_port}:8471",
        image.ref,
    )
    started = time.monotonic()
    client = AgentClient("127.0.0.1", agent_port, bundle.instance_id, bundle.agent.secret)
    try:
        wait_ready(client)
    except BaseException:
        print(logs(name))
        raise
    print(f"\nagent reported ready {time.monotonic() - started:.2f} s after podman run returned")
    return Running(name, pg_port, agent_port, bundle, client)


def connect(running: Running) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host="127.0.0.1",
        port=running.pg_port,
        user=running.bundle.admin.username,
        password=running.bundle.admin.password,
        dbname="postgres",
        connect_timeout=10,
        autocommit=True,
    )


def raw_get(
    running: Running, path: str = "/v1/health", headers: dict[str, str] | None = None
) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=10) as http:
        return http.get(f"http://127.0.0.1:{running.agent_port}{path}", headers=headers or {})


def test_signed_health_is_ready(running: Running) -> None:
    health = running.client.health()
    assert health.ready
    assert (health.instance_id, health.datastore, health.version) == (
        running.bundle.instance_id,
        "postgresql",
        "15",
    )
    assert (health.engine, health.restarts) == ("running", 0)


def test_the_real_agent_refuses_bad_calls(running: Running) -> None:
    secret, instance = running.bundle.agent.secret, running.bundle.instance_id

    def refusal(response: httpx.Response) -> tuple[int, str]:
        return response.status_code, response.json()["error"]["code"]

    assert refusal(raw_get(running)) == (401, "unsigned")
    wrong_secret = sign_request(generate_secret(), instance, "GET", "/v1/health")
    assert refusal(raw_get(running, headers=wrong_secret)) == (401, "bad_signature")
    other_instance = sign_request(secret, "someone-else", "GET", "/v1/health")
    assert refusal(raw_get(running, headers=other_instance)) == (403, "wrong_instance")
    stale = sign_request(secret, instance, "GET", "/v1/health", now=time.time() - 600)
    assert refusal(raw_get(running, headers=stale)) == (401, "stale")
    tampered = sign_request(secret, instance, "GET", "/v1/health")
    assert refusal(raw_get(running, "/v1/health?x=1", headers=tampered)) == (401, "bad_signature")
    once = sign_request(secret, instance, "GET", "/v1/health")
    assert raw_get(running, headers=once).status_code == 200
    assert refusal(raw_get(running, headers=once)) == (401, "replayed")
    with pytest.raises(BackendError) as info:
        AgentClient("127.0.0.1", running.agent_port, instance, generate_secret()).health()
    assert info.value.details["agent_code"] == "bad_signature"


def test_admin_logs_in_and_settings_apply(running: Running) -> None:
    with connect(running) as conn:
        assert conn.execute("SHOW shared_buffers").fetchone() == ("48MB",)
        assert conn.execute("SHOW max_connections").fetchone() == ("40",)
        assert conn.execute("SHOW jit").fetchone() == ("off",)
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
        # small WAL segments: a switchover's clean shutdown streams the rest of one
        assert conn.execute("SHOW wal_segment_size").fetchone() == ("1MB",)
        row = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles "
            "WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, True, False, True)  # the tenant's admin: no superuser
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host="127.0.0.1",
            port=running.pg_port,
            user="admin",
            password="wrong",
            dbname="postgres",
            connect_timeout=10,
        ).close()


ESCAPES = (
    "COPY (SELECT 1) TO PROGRAM 'id'",  # a shell in the guest
    "ALTER SYSTEM SET archive_command = 'id'",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT pg_ls_dir('/etc')",
    "CREATE ROLE sneaky SUPERUSER",
    "GRANT pg_execute_server_program TO admin",  # PostgreSQL 15's CREATEROLE escalation
    "CREATE EXTENSION IF NOT EXISTS adminpack",
    "LOAD '/tmp/x.so'",
)


@pytest.mark.parametrize("statement", ESCAPES)
def test_the_tenant_admin_cannot_reach_the_guest(running: Running, statement: str) -> None:
    with connect(running) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


def test_the_tenant_admin_still_does_what_a_tenant_needs(running: Running) -> None:
    with connect(running) as conn:
        conn.execute("CREATE DATABASE tenant_made")
        conn.execute("DROP DATABASE tenant_made")
        conn.execute("CHECKPOINT")
        assert conn.execute("SELECT count(*) > 0 FROM pg_stat_activity").fetchone() == (True,)
        assert conn.execute("SHOW data_directory").fetchone() == ("/var/lib/oneplatform/pgdata",)
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("DROP TABLE kept")


def test_the_platform_role_manages_users_and_nobody_else_logs_in_with_it(
    running: Running,
) -> None:
    platform = running.bundle.platform
    assert platform is not None
    with psycopg.connect(
        host="127.0.0.1",
        port=running.pg_port,
        user=platform.username,
        password=platform.password,
        dbname="postgres",
        connect_timeout=10,
        autocommit=True,
    ) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreaterole, pg_has_role(current_user, 'admin', 'MEMBER') "
            "FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, True, True)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host="127.0.0.1",
            port=running.pg_port,
            user=platform.username,
            password=running.bundle.admin.password,
            dbname="postgres",
            connect_timeout=10,
        ).close()


def test_engine_restart_through_the_agent(running: Running) -> None:
    started = time.monotonic()
    health = running.client.restart_engine()
    print(f"\nengine restart through the agent: {time.monotonic() - started:.2f} s")
    assert health.ready and health.engine == "running"
    with connect(running) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_data_survives_a_container_restart(running: Running) -> None:
    with connect(running) as conn:
        conn.execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO kept VALUES (1, 'still here')")
    started = time.monotonic()
    podman("restart", running.name)
    wait_ready(running.client)
    print(f"\npodman restart until the agent was ready: {time.monotonic() - started:.2f} s")
    with connect(running) as conn:
        assert conn.execute("SELECT note FROM kept WHERE id = 1").fetchone() == ("still here",)
    assert running.client.health().restarts == 0  # a clean stop is not a crash


def test_stop_is_fast_and_the_log_holds_no_secrets(running: Running) -> None:
    started = time.monotonic()
    podman("stop", "-t", "10", running.name)
    elapsed = time.monotonic() - started
    print(f"\npodman stop: {elapsed:.2f} s")
    assert elapsed < 5, f"podman stop took {elapsed:.1f} s: the fast shutdown did not work"
    state = podman("inspect", "--format", "{{.State.ExitCode}}", running.name).stdout.strip()
    assert state == "0"
    console = logs(running.name)
    assert "received fast shutdown request" in console
    assert "GET /v1/health 200" in console
    assert running.bundle.admin.password not in console
    assert running.bundle.agent.secret not in console
    assert "SCRAM-SHA-256$" not in console


def test_without_a_bundle_the_ports_open_and_every_call_is_refused(
    image: ImageArtifact, resources: Resources
) -> None:
    name = f"onep-test-agent-nobundle-{uuid.uuid4().hex[:8]}"
    pg_port, agent_port = find_free_port(), find_free_port()
    resources.containers.append(name)
    podman(
        "run",
        "-d",
        "--name",
        name,
        *RUN_FLAGS,
        "-p",
        f"127.0.0.1:{pg_port}:5432",
        "-p",
        f"127.0.0.1:{agent_port}:8471",
        image.ref,
    )
    deadline = time.monotonic() + READY_TIMEOUT
    refused: httpx.Response | None = None
    pg_answer = ""
    while time.monotonic() < deadline and (refused is None or not pg_answer):
        if refused is None:
            try:
                with httpx.Client(trust_env=False, timeout=5) as http:
                    refused = http.get(f"http://127.0.0.1:{agent_port}/v1/health")
            except httpx.TransportError:
                pass
        if not pg_answer:
            try:
                psycopg.connect(
                    host="127.0.0.1",
                    port=pg_port,
                    user="postgres",
                    password="guess",
                    dbname="postgres",
                    connect_timeout=5,
                ).close()
                pg_answer = "logged in"
            except psycopg.OperationalError as exc:
                if "password authentication failed" in str(exc):
                    pg_answer = str(exc)
        time.sleep(0.2)
    assert refused is not None, f"the agent never answered:\n{logs(name)}"
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "no_bundle"
    # PostgreSQL answers on 5432, and nobody can log in: no password is set.
    assert "password authentication failed" in pg_answer, logs(name)
    for port in (pg_port, agent_port):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_nothing_is_left_behind(resources: Resources) -> None:
    """Runs last in this module: the finalizer's cleanup, checked while we can still see it."""
    resources.cleanup()
    volumes = podman("volume", "ls", "--format", "{{.Name}}").stdout.split()
    secrets = podman("secret", "ls", "--format", "{{.Name}}").stdout.split()
    containers = podman("ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}")
    assert not set(resources.volumes) & set(volumes)
    assert not set(resources.secrets) & set(secrets)
    assert not set(resources.containers) & set(containers.stdout.split())
