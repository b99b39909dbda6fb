"""A datastore engine run on the host as the agent runs it in a guest: its own throwaway
directory and ports, the bundle's users, and the embedded store for its backups."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

from oneplatform.config import Settings
from oneplatform.dbaas.datastores.base import ConnInfo, Datastore
from oneplatform.guest.bundle import (
    AdminCredentials,
    AgentSettings,
    Bundle,
    EngineSettings,
    RestoreSettings,
    StoreSettings,
    UpstreamSettings,
    generate_password,
    generate_secret,
)
from oneplatform.guest.enginelog import EngineLog
from oneplatform.guest.engines.base import Engine
from oneplatform.guest.processes import ChildProcesses
from oneplatform.hostsvc.objectstore import embedded_store, store_config
from tests.integration.conftest import find_free_port, require_or_fail

E = TypeVar("E", bound=Engine)
# A store for the engines' backups: one module at a time on its side of the test workers
# (tests/e2e/conftest.py OTHERS_PORTS).
STORE_PORT = 8339
CIPHER = "the-repositorys-own-passphrase"


@dataclass
class Server(Generic[E]):
    engine: E
    proc: subprocess.Popen[bytes]
    port: int
    platform: ConnInfo  # the platform's user, acting for the admin
    admin_password: str


def wait_ready(engine: Engine, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ok, detail = engine.health()
        if ok:
            return
        assert time.monotonic() < deadline, detail
        time.sleep(0.2)


@contextmanager
def serving(
    make: type[E],
    ds: Datastore,
    root: Path,
    data: str,
    backup: StoreSettings | None = None,
    restore: RestoreSettings | None = None,
    *,
    standby: UpstreamSettings | None = None,
    like: Server[Any] | None = None,
    **options: Any,
) -> Iterator[Server[E]]:
    """An engine of class ``make`` for ``ds`` in a directory of its own under ``root`` (its
    data in ``data`` there), started, bootstrapped (a restore's first start included);
    stopped and removed after. ``standby``: a replica of that upstream, with the users of
    the server ``like`` (as a database's members have); ``options`` go to the engine."""
    home = root / uuid.uuid4().hex[:12]
    home.mkdir(parents=True, mode=0o755)
    port = find_free_port()
    bundle = Bundle(
        instance_id=uuid.uuid4().hex,
        datastore=ds.name,
        version=ds.default_version,
        agent=AgentSettings(secret=generate_secret(), port=find_free_port()),
        engine=EngineSettings(port=port, settings=ds.engine_settings(1, 512)),
        admin=AdminCredentials("admin", like.admin_password if like else generate_password()),
        platform=AdminCredentials(
            "onep_platform", like.platform.password if like else generate_password()
        ),
        backup=backup,
        restore=restore,
        standby=standby,
    )
    assert bundle.platform is not None
    engine = make(
        bundle, ChildProcesses(), data_dir=home / data, socket_dir=home / "run",  # type: ignore[call-arg]
        bind_address="127.0.0.1", backup_conf_dir=home / "backup-conf",
        map_store_host=lambda store: None,  # the store is at localhost, which its CA names
        **options,
    )  # fmt: skip
    engine.initialize()
    engine.configure()
    platform = ConnInfo("127.0.0.1", port, "onep_platform", bundle.platform.password, "admin")
    srv = Server(engine, engine.start(), port, platform, bundle.admin.password)
    _drain(srv.proc)
    try:
        wait_ready(engine)
        engine.bootstrap()
        yield srv
    finally:
        engine.stop(srv.proc, 30)
        shutil.rmtree(home, ignore_errors=True)


def _drain(proc: subprocess.Popen[bytes]) -> None:
    """Read the server's output as the agent does (a full pipe would stop the server)."""
    EngineLog(echo=open(os.devnull, "wb")).attach(proc.stdout)  # noqa: SIM115 - the thread's


def restart(srv: Server[Any]) -> None:
    """Stop the server cleanly and start it again as the agent would."""
    assert srv.engine.stop(srv.proc, 30) == 0
    srv.engine.initialize()  # finds its data: nothing made again
    srv.engine.configure()
    srv.proc = srv.engine.start()
    _drain(srv.proc)
    wait_ready(srv.engine)
    srv.engine.bootstrap()


@contextmanager
def backup_store(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Settings]:
    require_or_fail(shutil.which("rclone"), "rclone is not installed (scripts/setup.sh)")
    settings = Settings(home=tmp_path_factory.mktemp(name), store_port=STORE_PORT)
    service = embedded_store(settings)
    service.start()
    assert service.wait_ready(60), service.detail
    try:
        yield settings
    finally:
        service.stop()


def repository(settings: Settings, bucket: str, access: str, secret: str) -> StoreSettings:
    """The guest's view of a repository in the store (reached at localhost)."""
    return StoreSettings(
        host="localhost", address="127.0.0.1", port=STORE_PORT, bucket=bucket,
        access_key=access, secret_key=secret, ca_pem=store_config(settings).ca_pem,
        cipher_pass=CIPHER,
    )  # fmt: skip


def take_backup(engine: Engine, kind: str, timeout: float = 300) -> dict[str, Any]:
    """Start a backup as the agent's API does and wait for its job; the repository's entry."""
    status, answer = engine.start_backup(kind)
    assert status == 200, answer
    deadline = time.monotonic() + timeout
    while (job := engine.backup_job()) and job["state"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job is not None and job["state"] == "succeeded", job
    return dict(job["backup"])
