"""End-to-end fixtures: the platform as a real `onep up` process, driven through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.podman import force_remove

ONEP = str(Path(sys.executable).with_name("onep"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


DEFAULT_IMAGES = "postgresql-15"
# The lab's platform and the others' run at once (two test workers): each side has its own
# store and replication ports (the lab's nodes forward 8333, the default) and its own host
# and endpoint port ranges. The ports of the modules with a store of their own (8331-8338)
# are on the others' side, which runs one module at a time.
OTHERS_PORTS = {
    "ONEP_STORE_PORT": "8339",
    "ONEP_REPLICATION_PORT": "8330",
    "ONEP_PORT_RANGE_START": "25000",
    "ONEP_PORT_RANGE_END": "29999",
    "ONEP_ENDPOINT_PORT_START": "16500",
    "ONEP_ENDPOINT_PORT_END": "17999",
}
LAB_PORTS = {
    "ONEP_STORE_PORT": "8333",
    "ONEP_REPLICATION_PORT": "8334",
    "ONEP_PORT_RANGE_START": "20000",
    "ONEP_PORT_RANGE_END": "24999",
    "ONEP_ENDPOINT_PORT_START": "15000",
    "ONEP_ENDPOINT_PORT_END": "16499",
}


@dataclass
class Platform:
    """One `onep up` process with its own home; restartable, killable."""

    home: Path
    port: int
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def env(self, **more: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONEP_")}
        env.update(
            ONEP_HOME=str(self.home),
            ONEP_LEASE_SECONDS="3",
            # the emulated bare-metal lab is shared: only the tests that want it enroll it
            ONEP_BMLAB_FILE=str(self.home / "no-bmlab.json"),
            # what its start builds (each image once, in the shared cache); a module that
            # uses another engine names its image too
            ONEP_IMAGES=DEFAULT_IMAGES,
            **OTHERS_PORTS,
        )
        env.update(self.extra_env)
        env.update(more)
        return env

    def start(self, **env: str) -> None:
        log = open(self.home / "up.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [ONEP, "up", "--port", str(self.port)],
            env=self.env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"onep up exited: {self.log()[-3000:]}")
            if self.run("status", check=False).returncode == 0:
                return
            time.sleep(0.3)
        raise AssertionError(f"onep up did not come up: {self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no clean-up code runs, as after a crash or an OOM kill."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)  # it stops its backup store first (<= 5 s)
            except subprocess.TimeoutExpired:
                self.kill()
        self.stop_store()

    def stop_store(self) -> None:
        """The host services run in sessions of their own (they outlive a killed platform):
        stop what this home's platform left running, so the next platform can bind their
        ports (the embedded store or the relay to an external one, and the endpoint proxy)."""
        for name in ("weed", "relay"):
            stop_host_service(self.home / "objectstore" / f"{name}.pid")
        stop_host_service(self.home / "proxy" / "proxy.pid")

    def log(self) -> str:
        path = self.home / "up.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def run(
        self, *args: str, check: bool = True, timeout: float = 600, **env: str
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [ONEP, *args], env=self.env(**env), capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"onep {' '.join(args)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def json(self, *args: str, timeout: float = 600, **env: str) -> Any:
        return json.loads(self.run(*args, "-o", "json", timeout=timeout, **env).stdout)

    def guest_storage(self, database: str, timeout: float = 120) -> dict[str, Any]:
        """The data filesystem as the guest agent reports it (the health checker's or the
        last growth's report), once there is one."""
        deadline = time.monotonic() + timeout
        while True:
            storage = self.json("db", "show", database)["storage"]
            if storage is not None:
                return dict(storage)
            assert time.monotonic() < deadline, "the agent never reported its storage"
            time.sleep(2)

    def engine_metrics(
        self, database: str, want: str = "onep_db_connections", timeout: float = 120
    ) -> dict[str, float]:
        """``onep_db_*`` samples of ``database`` from ``/metrics`` (the admin's token), once
        the health checker has read what ``want`` names: {metric name[replica]: value}."""
        from prometheus_client.parser import text_string_to_metric_families

        token = (self.home / "admin-token").read_text().strip()
        deadline = time.monotonic() + timeout
        while True:
            scraped = subprocess.run(
                ["curl", "-sf", "-H", f"Authorization: Bearer {token}",
                 f"http://127.0.0.1:{self.port}/metrics"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            found = {
                s.name + (f"[{s.labels['replica']}]" if "replica" in s.labels else ""): s.value
                for family in text_string_to_metric_families(scraped)
                for s in family.samples
                if s.name.startswith("onep_db_") and s.labels.get("database") == database
            }
            if any(want in k for k in found) or time.monotonic() > deadline:
                return found
            time.sleep(2)

    def wait_images_ready(self, timeout: float = 900) -> None:
        """Until the images the platform builds at its start (ONEP_IMAGES) are READY."""
        wanted = set(self.env()["ONEP_IMAGES"].split(","))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            images = [i for i in self.json("image", "list") if i["name"] in wanted]
            assert {i["name"] for i in images} == wanted, images
            if all(i["status"] == "READY" for i in images):
                return
            assert not any(i["status"] == "ERROR" for i in images), images
            time.sleep(1)
        raise AssertionError("images did not become READY")


def stop_host_service(pid_file: Path) -> None:
    """SIGTERM the process group in ``pid_file`` (SIGKILL after 40 s) and wait for its end."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    for sig, wait in ((signal.SIGTERM, 40.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def podman_containers(instance_id: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [
            "podman",
            "ps",
            "-a",
            "--filter",
            f"label=oneplatform.instance={instance_id}",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out or "[]")


def member_container(platform: Platform, member: str) -> str:
    """The id of the container a database's live member runs in."""
    with sqlite3.connect(platform.home / "oneplatform.db") as conn:
        (instance_id,) = conn.execute(
            "SELECT instance_id FROM db_members WHERE name = ? AND deleted_at IS NULL", (member,)
        ).fetchone()
    (container,) = podman_containers(instance_id)
    return str(container["Id"])


def _require(ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and an end-to-end prerequisite is missing: {reason}")
    pytest.skip(reason)


@contextmanager
def own_platform(
    tmp_path_factory: pytest.TempPathFactory, name: str, **env: str
) -> Iterator[Platform]:
    """A platform of a module's own (``env``: ONEP_* settings of its own), every image READY;
    what its tests left is deleted when it stops."""
    p = Platform(home=tmp_path_factory.mktemp(name), port=free_port(), extra_env=env)
    try:  # a platform that failed to start leaves no host service behind for the next
        p.start()
        p.wait_images_ready()
        yield p
    finally:
        _cleanup_containers(p)
        p.stop()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    _require(shutil.which("podman") is not None, "podman is not installed")
    _require(Path(ONEP).exists(), "the onep console script is not installed")
    with own_platform(tmp_path_factory, "onep-home") as p:
        yield p


def _cleanup_containers(p: Platform) -> None:
    """Remove whatever this platform's instances left on Podman if a test failed half-way
    (a database's compute is the platform's, not listed among the project's instances:
    delete what databases are left first)."""
    for db in json.loads(p.run("db", "list", "-o", "json", check=False).stdout or "[]"):
        p.run("db", "delete", db["name"], "--wait", check=False)
    for inst in json.loads(p.run("instance", "list", "-o", "json", check=False).stdout or "[]"):
        for c in podman_containers(inst["id"]):
            force_remove(c["Id"], check=False)


# -- times worth reading, printed at the end of the run ------------------------------------------
TIMINGS = Path(__file__).resolve().parents[2] / ".cache" / "e2e"
SECTIONS = {
    "healing": "self-healing: time to HEALTHY",
    "warm": "warm claims: CLI call to the application user's first query",
    "restore": "restores: CLI call to ACTIVE, data checked",
    "switch": "switchovers and moves: write gap (longest time without an acknowledged write)",
    "move": "moves: CLI call to done (a replica made, caught up, switched to, the former retired)",
    "create": "creates: CLI call to ACTIVE (side by side)",
    "storage": "storage growth: CLI call to done (online, a client writing)",
    "cluster": "clusters: CLI call to ACTIVE (TCG nodes)",
    "bmcluster": "bare-metal clusters: CLI call to done (TCG lab node)",
}


_TIMINGS_LOCK = threading.Lock()  # tests may record from threads of their own


def record_timing(section: str, case: str, seconds: float) -> None:
    """Keep how long ``case`` took (see the run's summary): a self-healing case until the
    database was HEALTHY again, a warm claim until the first query."""
    path = TIMINGS / f"{section}.json"
    with _TIMINGS_LOCK:
        path.parent.mkdir(parents=True, exist_ok=True)
        times = json.loads(path.read_text()) if path.exists() else {}
        times[case] = round(seconds, 1)
        path.write_text(json.dumps(times, indent=2) + "\n")


def reset_timings(*sections: str) -> None:
    """Forget the times of an earlier run (called by the module that records them)."""
    for section in sections:
        (TIMINGS / f"{section}.json").unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for section, title in SECTIONS.items():
        path = TIMINGS / f"{section}.json"
        if not path.exists():
            continue
        terminalreporter.section(title)
        for case, seconds in json.loads(path.read_text()).items():
            terminalreporter.write_line(f"{seconds:7.1f} s  {case}")
