"""Guest agent without containers: its HTTP API and supervisor with a fake engine, the
platform's client against it, and the PostgreSQL engine's pure helpers."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os
import pwd
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from oneplatform.dbaas.agent_client import AgentClient
from oneplatform.errors import BackendError, BackendUnavailable
from oneplatform.guest.bundle import (
    AdminCredentials,
    AgentSettings,
    Bundle,
    EngineSettings,
    StoreSettings,
    UpstreamSettings,
)
from oneplatform.guest.enginelog import SERVER_OUTPUT, EngineLog
from oneplatform.guest.engines import ENGINES
from oneplatform.guest.engines.base import ChildProcesses, Engine, EngineError
from oneplatform.guest.engines.postgresql import (
    PostgresEngine,
    admin_role_sql,
    mark_streamed_for_archive,
    saslprep,
    scram_sha256_verifier,
    waiting_for_archive,
)
from oneplatform.guest.http import Agent, AgentHTTPServer
from oneplatform.guest.main import build
from oneplatform.guest.signing import sign_request
from oneplatform.guest.supervisor import ENGINE_FAILED, ENGINE_RUNNING, Supervisor

INSTANCE = "inst-unit"
SECRET = "k" * 43


class FakeEngine(Engine):
    """A sleeping Python process stands in for the server."""

    datastore = "postgresql"

    def __init__(self, bundle: Bundle | None, fail_starts: int = 0) -> None:
        super().__init__(bundle, ChildProcesses())
        self.fail_starts = fail_starts
        self.starts = 0
        self.bootstraps = 0
        self.bootstrap_initials: list[object] = []  # the claims' initial databases and users
        self.proc: subprocess.Popen[bytes] | None = None

    def initialize(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def start(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        if self.fail_starts:
            self.fail_starts -= 1
            raise EngineError("cannot start (test)")
        self.proc = self.children.popen(
            [sys.executable, "-c", "import time; time.sleep(600)"], stdin=subprocess.DEVNULL
        )
        return self.proc

    def health(self) -> tuple[bool, str]:
        ok = self.proc is not None and self.proc.poll() is None
        return ok, "up" if ok else "down"

    def bootstrap(self) -> None:
        self.bootstraps += 1
        if self.initial is not None:
            self.bootstrap_initials.append(self.initial)
            self.initial, self.initialized = None, True

    def stop(self, proc: subprocess.Popen[bytes], timeout: float) -> int | None:
        proc.terminate()
        return proc.wait(timeout)


def make_bundle() -> Bundle:
    return Bundle(
        instance_id=INSTANCE,
        datastore="postgresql",
        version="15",
        agent=AgentSettings(secret=SECRET),
        engine=EngineSettings(port=5432),
        admin=AdminCredentials(username="admin", password="pw-unit-test"),
    )


def fast_supervisor(engine: Engine | None, **kwargs: float | str) -> Supervisor:
    options: dict[str, float | str] = {
        "ready_timeout": 10.0,
        "stop_timeout": 5.0,
        "backoff_initial": 0.1,
        "backoff_max": 0.2,
        "poll_interval": 0.02,
    }
    options.update(kwargs)
    return Supervisor(engine, **options)  # type: ignore[arg-type]


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def serve() -> Iterator[Callable[[Agent], int]]:
    """Start an agent's HTTP server on a free port of 127.0.0.1; returns the port."""
    started: list[tuple[AgentHTTPServer, Supervisor]] = []

    def run(agent: Agent) -> int:
        server = AgentHTTPServer(("127.0.0.1", 0), agent)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        agent.supervisor.start()
        started.append((server, agent.supervisor))
        return int(server.server_address[1])

    yield run
    for server, supervisor in started:
        supervisor.stop(10)
        server.shutdown()
        server.server_close()


def test_signed_health_and_restart_through_the_client(serve: Callable[[Agent], int]) -> None:
    engine = FakeEngine(make_bundle())
    port = serve(Agent(make_bundle(), fast_supervisor(engine)))
    client = AgentClient("127.0.0.1", port, INSTANCE, SECRET)
    wait_for(lambda: client.health().ready)
    health = client.health()
    assert (health.instance_id, health.datastore, health.engine) == (
        INSTANCE,
        "postgresql",
        "running",
    )
    first = engine.proc
    assert first is not None
    restarted = client.restart_engine(timeout=20)
    assert restarted.ready and restarted.engine == ENGINE_RUNNING
    assert engine.proc is not first and first.poll() is not None
    assert engine.starts == 2 and engine.bootstraps == 2


class TalkingEngine(FakeEngine):
    """A server that writes three lines at its start, then one more each 0.1 s."""

    def start(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        script = (
            "import sys, time\n"
            "for i in range(3): print(f'started {i}', flush=True)\n"
            "for i in range(600):\n"
            "    time.sleep(0.1)\n"
            "    print(f'tick {i}', file=sys.stderr, flush=True)\n"
        )
        self.proc = self.children.popen(
            [sys.executable, "-c", script], stdin=subprocess.DEVNULL, **SERVER_OUTPUT
        )
        return self.proc


def test_the_engine_log_is_read_through_the_agent_and_followed(
    serve: Callable[[Agent], int],
) -> None:
    supervisor = fast_supervisor(TalkingEngine(make_bundle()))
    supervisor.log = EngineLog(echo=open(os.devnull, "wb"))  # noqa: SIM115 - kept by the log
    port = serve(Agent(make_bundle(), supervisor))
    client = AgentClient("127.0.0.1", port, INSTANCE, SECRET)
    wait_for(lambda: len(client.logs(tail=100)["lines"]) >= 5)
    first = client.logs(tail=100)
    assert first["lines"][:3] == ["started 0", "started 1", "started 2"]  # stdout and stderr
    assert first["lines"][3].startswith("tick ")
    last = client.logs(tail=2)
    assert len(last["lines"]) == 2 and last["next"] >= first["next"]
    wait_for(lambda: client.logs(after=first["next"])["lines"] != [])
    later = client.logs(after=first["next"])
    assert later["first"] == first["next"] + 1  # nothing missed, nothing twice
    assert all(line.startswith("tick ") for line in later["lines"])
    with pytest.raises(BackendError) as info:
        client._call("GET", "/v1/logs?tail=many")
    assert info.value.details["agent_code"] == "bad_request"


def test_the_engine_log_keeps_the_latest_lines_numbered() -> None:
    ring = EngineLog(capacity=3, echo=open(os.devnull, "wb"))  # noqa: SIM115
    assert ring.read() == {"lines": [], "first": None, "next": 0}
    for i in range(5):
        ring.add(f"line {i}")
    assert ring.read(tail=10) == {"lines": ["line 2", "line 3", "line 4"], "first": 3, "next": 5}
    assert ring.read(tail=1, after=3) == {"lines": ["line 3"], "first": 4, "next": 4}
    assert ring.read(after=5) == {"lines": [], "first": None, "next": 5}


def test_refusals_over_http(serve: Callable[[Agent], int]) -> None:
    port = serve(Agent(make_bundle(), fast_supervisor(FakeEngine(make_bundle()))))
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(trust_env=False) as http:
        r = http.get(f"{base}/v1/health")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unsigned"
        headers = sign_request(SECRET, INSTANCE, "GET", "/v1/nope")
        r = http.get(f"{base}/v1/nope", headers=headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        headers = sign_request(SECRET, INSTANCE, "POST", "/v1/health")
        r = http.post(f"{base}/v1/health", headers=headers)
        assert r.status_code == 405
    with pytest.raises(BackendError) as info:
        AgentClient("127.0.0.1", port, "other", SECRET).health()
    assert info.value.details["agent_code"] == "wrong_instance"
    assert info.value.details["http_status"] == 403
    with pytest.raises(BackendError) as info:
        AgentClient("127.0.0.1", port, INSTANCE, "w" * 43).health()
    assert info.value.details["agent_code"] == "bad_signature"


def test_no_bundle_refuses_everything(serve: Callable[[Agent], int]) -> None:
    port = serve(Agent(None, fast_supervisor(FakeEngine(None)), problem="no config bundle"))
    with pytest.raises(BackendError) as info:
        AgentClient("127.0.0.1", port, INSTANCE, SECRET).health()
    assert info.value.details["agent_code"] == "no_bundle"
    assert info.value.details["http_status"] == 401


def test_client_maps_connect_errors_to_backend_unavailable() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(BackendUnavailable):
            AgentClient("127.0.0.1", port, INSTANCE, SECRET, timeout=2).health()


def test_supervisor_restarts_an_engine_that_dies() -> None:
    engine = FakeEngine(make_bundle())
    supervisor = fast_supervisor(engine)
    supervisor.start()
    try:
        wait_for(lambda: supervisor.snapshot()[0] == ENGINE_RUNNING)
        first = engine.proc
        assert first is not None
        first.kill()
        wait_for(lambda: supervisor.snapshot()[2] == 1)
        wait_for(lambda: supervisor.snapshot()[0] == ENGINE_RUNNING and engine.proc is not first)
        assert engine.starts == 2
    finally:
        supervisor.stop(10)
    assert supervisor.snapshot()[0] == "stopped"
    assert engine.proc is not None and engine.proc.poll() is not None


class SlowStopEngine(FakeEngine):
    """Its server says it is done at once but takes its time to exit (as an archiving
    PostgreSQL's last archiver round)."""

    def __init__(self) -> None:
        super().__init__(make_bundle())
        self.shut_down = threading.Event()
        self.exit_now = threading.Event()

    def stop(self, proc: subprocess.Popen[bytes], timeout: float) -> int | None:
        self.shut_down.set()
        self.exit_now.wait(10)
        return super().stop(proc, timeout)


def test_a_stop_and_start_may_answer_before_the_engine_has_exited() -> None:
    engine = SlowStopEngine()
    supervisor = fast_supervisor(engine)
    supervisor.start()
    hooks: list[str] = []
    try:
        wait_for(lambda: supervisor.snapshot()[0] == ENGINE_RUNNING)
        first = engine.proc
        answer = supervisor.restart_with(
            lambda: hooks.append("hook") or "after the exit",
            10,
            early=lambda: "early" if engine.shut_down.is_set() else None,
        )
        assert answer == "early" and hooks == []  # answered; the engine is still exiting
        assert first is not None and first.poll() is None
        assert supervisor.snapshot()[:2] == ("starting", "stopping to start again")
        engine.exit_now.set()
        wait_for(lambda: hooks == ["hook"])  # the hook still ran, after the exit
        wait_for(lambda: supervisor.snapshot()[0] == ENGINE_RUNNING and engine.proc is not first)
        # without an early answer, the hook's result, once the engine has exited
        engine.exit_now.clear()
        engine.shut_down.clear()
        threading.Timer(0.5, engine.exit_now.set).start()
        assert supervisor.restart_with(lambda: "after the exit", 10, early=lambda: None) == (
            "after the exit"
        )
    finally:
        engine.exit_now.set()
        supervisor.stop(10)


def test_supervisor_reports_start_failures_and_retries() -> None:
    engine = FakeEngine(make_bundle(), fail_starts=2)
    supervisor = fast_supervisor(engine)
    supervisor.start()
    try:
        wait_for(lambda: supervisor.snapshot()[0] == ENGINE_FAILED)
        assert "cannot start (test)" in supervisor.snapshot()[1]
        wait_for(lambda: supervisor.snapshot()[0] == ENGINE_RUNNING)
        assert engine.starts == 3
    finally:
        supervisor.stop(10)


def test_restart_reports_a_failed_start() -> None:
    engine = FakeEngine(make_bundle())
    supervisor = fast_supervisor(engine)
    supervisor.start()
    try:
        wait_for(lambda: supervisor.snapshot()[0] == ENGINE_RUNNING)
        engine.fail_starts = 1
        ok, detail = supervisor.restart(10)
        assert not ok and "cannot start (test)" in detail
        wait_for(lambda: supervisor.snapshot()[0] == ENGINE_RUNNING)  # and it recovers
    finally:
        supervisor.stop(10)


def test_supervisor_without_an_engine_reports_why() -> None:
    supervisor = Supervisor(None, fatal="the bundle is for mariadb 10.11")
    supervisor.start()
    assert supervisor.snapshot()[:2] == (ENGINE_FAILED, "the bundle is for mariadb 10.11")
    assert supervisor.restart(1) == (False, "the bundle is for mariadb 10.11")


def test_engines_are_registered_by_datastore_name() -> None:
    assert (
        list(ENGINES) == ["postgresql", "mariadb", "redis"]
        and ENGINES["postgresql"] is PostgresEngine
    )
    assert all(name == engine.datastore for name, engine in ENGINES.items())


def test_build_picks_the_image_s_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEP_DATASTORE", "postgresql")
    monkeypatch.setenv("ONEP_DATASTORE_VERSION", "15")
    agent, _ = build(make_bundle())
    engine = agent.supervisor.engine
    assert isinstance(engine, PostgresEngine) and engine.version == "15"
    monkeypatch.setenv("ONEP_DATASTORE", "nosuchdb")
    agent, _ = build(None)
    assert agent.supervisor.engine is None
    assert agent.supervisor.snapshot()[1] == "this agent has no engine for 'nosuchdb'"
    monkeypatch.setenv("ONEP_DATASTORE", "postgresql")
    monkeypatch.setenv("ONEP_DATASTORE_VERSION", "16")
    agent, _ = build(make_bundle())
    assert agent.supervisor.snapshot()[1] == (
        "the bundle is for postgresql 15 but this image runs postgresql 16"
    )


# --- PostgreSQL helpers


def test_render_conf_quotes_values_and_keeps_managed_settings(tmp_path: Path) -> None:
    bundle = Bundle(
        instance_id=INSTANCE,
        datastore="postgresql",
        version="15",
        agent=AgentSettings(secret=SECRET),
        engine=EngineSettings(
            port=6543,
            settings={
                "shared_buffers": "64MB",
                "search_path": '"$user", it\'s',
                "listen_addresses": "localhost",
                "PORT": "1",
            },
        ),
        admin=AdminCredentials(username="admin", password="pw"),
    )
    conf = PostgresEngine(bundle, ChildProcesses(), data_dir=tmp_path).render_conf()
    lines = conf.splitlines()
    assert "shared_buffers = '64MB'" in lines
    assert "search_path = '\"$user\", it''s'" in lines
    assert "listen_addresses = 'localhost'" not in lines
    assert "PORT = '1'" not in lines
    assert lines[-12:] == [
        "listen_addresses = '*'",
        "port = '6543'",
        "unix_socket_directories = '/var/run/postgresql'",
        "jit = 'off'",
        "logging_collector = 'off'",
        "log_destination = 'stderr'",
        "password_encryption = 'scram-sha-256'",
        "wal_level = 'replica'",
        "wal_log_hints = 'on'",
        "archive_mode = 'on'",
        "archive_timeout = '60'",
        "archive_command = '/bin/true'",  # no repository in this bundle: nothing is kept
    ]


def test_a_prepared_standby_streams_only_until_promoted_or_the_time_is_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StoreSettings(
        host="store.test",
        address="10.0.0.1",
        port=8333,
        bucket="b",
        access_key="a",
        secret_key="s",
        ca_pem="-----BEGIN CERTIFICATE-----",
        cipher_pass="c",
    )
    bundle = dataclasses.replace(make_bundle(), backup=store)
    engine = PostgresEngine(bundle, ChildProcesses(), data_dir=tmp_path)
    queries: list[str] = []
    monkeypatch.setattr(engine, "_query", lambda sql, *a, **k: queries.append(sql) or "t")
    monkeypatch.setattr(engine.repo, "ensure_stanza", lambda *a, **k: None)
    monkeypatch.setattr(engine, "replication_status", lambda: {"role": "standby"})
    with pytest.raises(EngineError, match="not a standby"):
        engine.prepare_promotion(5)  # a primary has nothing to prepare

    engine._make_standby(tmp_path, UpstreamSettings("hub", 8334, "repl", "pw"))

    def restores() -> bool:
        return any(line.startswith("restore_command") for line in engine.render_conf().splitlines())

    def written() -> str:
        return (tmp_path / engine.CONF_NAME).read_text()

    assert restores()
    engine.prepare_promotion(1.0)  # no promotion comes: restore_command is back by itself
    assert not restores() and "restore_command" not in written()
    assert queries[-1] == "SELECT pg_catalog.pg_reload_conf()"
    wait_for(lambda: "restore_command" in written(), timeout=5.0)
    assert restores() and queries[-1] == "SELECT pg_catalog.pg_reload_conf()"

    engine.prepare_promotion(30.0)  # promoted within the time: it is a primary for good
    assert engine.promote(5.0) == {"role": "primary"}
    assert engine._fallback_timer is None and "restore_command" not in written()
    engine._make_standby(tmp_path, UpstreamSettings("hub", 8334, "repl", "pw"))
    assert restores()  # later a standby again: it fetches from the repository again


def test_scram_verifier_matches_rfc_7677() -> None:
    # RFC 7677 section 3: user "user", password "pencil"; check the server signature.
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = scram_sha256_verifier("pencil", salt=salt)
    method, rest = verifier.split("$", 1)
    iterations_salt, keys = rest.split("$")
    stored_key_b64, server_key_b64 = keys.split(":")
    assert method == "SCRAM-SHA-256"
    assert iterations_salt == "4096:W22ZaJ0SNY7soEsUEjb6gQ=="
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth_message = (
        f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
        f"c=biws,r={nonce}"
    )
    server_signature = hmac.new(
        base64.b64decode(server_key_b64), auth_message.encode(), hashlib.sha256
    ).digest()
    assert base64.b64encode(server_signature).decode() == (
        "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    )
    assert len(base64.b64decode(stored_key_b64)) == 32


@pytest.mark.parametrize(
    ("password", "prepared"),
    [
        ("plain-ASCII 'pw'", b"plain-ASCII 'pw'"),
        ("I\u00adX", b"IX"),  # soft hyphen maps to nothing
        ("\u2168", b"IX"),  # NFKC
        ("a\u00a0b", b"a b"),  # non-ASCII space maps to space
        ("p\u00e4ss", "p\u00e4ss".encode()),
        ("x\u0007\u00e4", "x\u0007\u00e4".encode()),  # prohibited: raw bytes, as PostgreSQL
    ],
)
def test_saslprep(password: str, prepared: bytes) -> None:
    assert saslprep(password) == prepared


def test_admin_sql_never_holds_the_password() -> None:
    sql = admin_role_sql("admin", "s3cret'pw")
    assert "s3cret" not in sql
    assert (
        'ALTER ROLE "admin" WITH LOGIN SUPERUSER CREATEDB CREATEROLE PASSWORD \'SCRAM-SHA-256$4096:'
        in sql
    )
    assert "SET log_min_error_statement = 'panic';" in sql


def test_with_a_platform_role_the_admin_is_no_superuser() -> None:
    sql = admin_role_sql("admin", "s3cret'pw", ("onep_platform", "pl4tform-pw"))
    assert "s3cret" not in sql and "pl4tform" not in sql
    assert 'ALTER ROLE "admin" WITH LOGIN NOSUPERUSER CREATEDB NOCREATEROLE PASSWORD' in sql
    assert 'ALTER ROLE "onep_platform" WITH LOGIN NOSUPERUSER CREATEDB CREATEROLE PASSWORD' in sql
    assert 'GRANT "admin" TO "onep_platform";' in sql
    granted = next(line for line in sql.splitlines() if line.startswith("GRANT pg_"))
    assert "pg_monitor" in granted
    for dangerous in ("pg_execute_server_program", "pg_read_server_files", "pg_write_server_files"):
        assert dangerous not in sql
    assert "SUPERUSER CREATEDB" not in sql.replace("NOSUPERUSER", "")


def test_what_the_archive_still_has_to_take(tmp_path: Path) -> None:
    """archive_now waits on the ``.ready`` marks up to the switched segment, history files
    included (after a promotion the archiver's last name is a history or .partial file,
    so its statistics cannot tell)."""
    status = tmp_path / "archive_status"
    status.mkdir()
    segment = "000000030000000000000007"
    assert waiting_for_archive(status, segment) == []
    for name in (
        "000000030000000000000006.done",  # archived
        "000000030000000000000008.ready",  # after the switch: not waited for
        "000000020000000000000006.partial.ready",  # the former timeline's last one
        "00000003.history.ready",
    ):
        (status / name).touch()
    assert waiting_for_archive(status, segment) == [
        "000000020000000000000006.partial",
        "00000003.history",
    ]
    # without a switch (before a switchover's pause): everything marked ready
    assert waiting_for_archive(status, "F" * 24) == [
        "000000020000000000000006.partial",
        "00000003.history",
        "000000030000000000000008",
    ]
    assert waiting_for_archive(tmp_path / "gone", segment) == []


def test_a_promotion_archives_the_completed_segments_it_streamed(tmp_path: Path) -> None:
    """What a standby streamed is marked archived by PostgreSQL; before a promotion the
    completed segments of its newest timeline are marked ready again (a primary that died
    may not have archived them), not the one being received nor an older timeline's."""
    status = tmp_path / "archive_status"
    status.mkdir()
    size = 16 * 1024 * 1024
    assert mark_streamed_for_archive(status, 0x1_05, size) == []
    for name in (
        "0000000200000000000000FF.done",  # the newest timeline, before the next log id
        "000000020000000100000004.done",
        "000000020000000100000005.done",  # the one being received: maybe incomplete
        "000000010000000000000003.done",  # an older timeline
        "000000020000000100000003.ready",  # not archived yet: left as it is
        "00000002.history.done",
        "000000010000000000000002.partial.done",
    ):
        (status / name).touch()
    marked = mark_streamed_for_archive(status, 0x1_05, size)
    assert marked == ["0000000200000000000000FF", "000000020000000100000004"]
    assert sorted(p.name for p in status.iterdir()) == [
        "000000010000000000000002.partial.done",
        "000000010000000000000003.done",
        "00000002.history.done",
        "0000000200000000000000FF.ready",
        "000000020000000100000003.ready",
        "000000020000000100000004.ready",
        "000000020000000100000005.done",
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user takes root")
def test_a_recreated_containers_server_gets_its_archiving_files_back(tmp_path: Path) -> None:
    """A container recreated on its volume in a user namespace of its own finds the volume
    owned by someone else: the server's data directory and pgBackRest's spool (made by
    pgBackRest, below the directories the agent makes) both go back to the server's user,
    else every archive-push fails ("Permission denied" on the spool) and no WAL is archived."""
    data = tmp_path / "pgdata"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    engine = PostgresEngine(make_bundle(), ChildProcesses(), data_dir=data,
                            socket_dir=tmp_path / "run")  # fmt: skip
    out = engine.repo.work / "spool" / "archive" / "db" / "out"
    out.mkdir(parents=True)
    (out / "000000020000000000000012.ok").write_text("")
    engine.repo.work.chmod(0o750)
    everything = [data, data / "PG_VERSION"] + [
        Path(parent) / name
        for parent, dirs, files in os.walk(engine.repo.work)
        for name in [".", *dirs, *files]
    ]
    for path in everything:
        os.lchown(path, 54321, 54321)  # the former container's postgres, as this one sees it
    os.lchown(engine.repo.work, pwd.getpwnam("postgres").pw_uid, 0)  # made its own already
    engine.initialize()
    server = pwd.getpwnam("postgres").pw_uid
    assert {path.lstat().st_uid for path in everything} == {server}
