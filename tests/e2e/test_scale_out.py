"""The control plane as many processes on one PostgreSQL store, with workers killed at random.

Two `onep up --api-only` processes (two ports) and three `onep worker` processes, all real
subprocesses on one home (one machine) and a fresh database of the test PostgreSQL. Thirty
container databases are created at once through both APIs, a third of them deleted while
others still build, and every few seconds a random worker is killed with SIGKILL and started
again, until every operation has ended. Then: every operation succeeded, every database is
ACTIVE or deleted, one Podman container per live instance and nothing left of the deleted
ones (container, volumes, bundle secret), and each background loop ran in one process at a
time (its lease's takeovers follow the deaths of its holders, never the API processes).
"""

from __future__ import annotations

import itertools
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from oneplatform.sdk.client import Client
from tests.conftest import fresh_pg_database, libpq_uri
from tests.e2e.conftest import ONEP, Platform, free_port, podman_containers
from tests.podman import force_remove

pytestmark = pytest.mark.e2e

CREATES = 30
DELETE_EVERY = 3  # every third database is deleted again
KILL_EVERY = (3.0, 6.0)  # seconds between two SIGKILLs
DONE_WITHIN = 480.0  # seconds for every operation to end
# Ports of its own (the other groups run beside it): no host services run here, so only the
# instances' host ports and the endpoint ports (allocated, not bound) matter.
SCALE_PORTS = {
    "ONEP_PORT_RANGE_START": "30000",
    "ONEP_PORT_RANGE_END": "31999",
    "ONEP_ENDPOINT_PORT_START": "18000",
    "ONEP_ENDPOINT_PORT_END": "18999",
}
LEASE_LINE = re.compile(
    r"loop lease (\S+): (acquired|lost|released) \(generation (\d+), holder (\S+)\) "
    r"at ([0-9.]+)"
)


@dataclass
class Proc:
    """One control-plane process: `onep up --api-only` or `onep worker`, restartable."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [ONEP, *self.args], env=self.env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.pids.append(self.proc.pid)

    def kill(self) -> int:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture(scope="module")
def pg_store() -> Iterator[str]:
    """A fresh database on the test PostgreSQL server, dropped afterwards."""
    with fresh_pg_database("onep_scale") as url:
        yield url


def _query(url: str, sql: str, *args: Any, commit: bool = False) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq_uri(url)) as conn:
        cur = conn.execute(sql, args)
        return [] if commit else list(cur.fetchall())


def _open_operations(url: str) -> int:
    return int(
        _query(url, "SELECT count(*) FROM operations WHERE status IN ('PENDING', 'RUNNING')")[0][0]
    )


class Chaos:
    """SIGKILLs a random worker every few seconds and starts it again, until stopped;
    notes which operations each killed worker held at that moment."""

    def __init__(self, workers: list[Proc], url: str) -> None:
        self.workers = workers
        self.url = url
        self.kills: list[tuple[int, float]] = []  # (pid, time.time() of the kill)
        self.interrupted: set[str] = set()  # operations a killed worker was running
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def _run(self) -> None:
        rng = random.Random(17)
        try:
            while not self.stop.wait(rng.uniform(*KILL_EVERY)):
                victim = rng.choice(self.workers)
                pid = victim.kill()
                self.kills.append((pid, time.time()))
                held = _query(
                    self.url,
                    "SELECT id FROM operations WHERE status = 'RUNNING' AND lease_owner LIKE %s",
                    f"%-{pid}-%",
                )
                self.interrupted.update(row[0] for row in held)
                time.sleep(0.5)
                victim.start()
        except BaseException as exc:
            self.errors.append(exc)


def _lease_events(logs: list[Path]) -> dict[str, list[tuple[str, int, str, float]]]:
    """Every loop's lease events from the processes' logs: (what, generation, holder, time)."""
    events: dict[str, list[tuple[str, int, str, float]]] = {}
    for path in logs:
        for m in LEASE_LINE.finditer(path.read_text(errors="replace")):
            loop, what, gen, holder, at = m.groups()
            events.setdefault(loop, []).append((what, int(gen), holder, float(at)))
    return events


def _pid_of(holder: str) -> int:
    return int(holder.rsplit("-", 2)[-2])


def _check_leases(
    events: dict[str, list[tuple[str, int, str, float]]],
    worker_pids: set[int],
    kills: list[tuple[int, float]],
) -> dict[str, int]:
    """Each loop's lease went from holder to holder only when the former one was killed,
    gave it back, or lost it (and stopped its loop): one process at a time. Returns the
    takeovers per loop."""
    killed = dict(kills)
    takeovers = {}
    for loop, evs in events.items():
        acquired = sorted((e for e in evs if e[0] == "acquired"), key=lambda e: e[1])
        gens = [e[1] for e in acquired]
        assert len(gens) == len(set(gens)), f"{loop}: a generation acquired twice: {acquired}"
        assert [e[3] for e in acquired] == sorted(e[3] for e in acquired), acquired
        for _, _, holder, _ in acquired:
            assert _pid_of(holder) in worker_pids, f"{loop} ran in a non-worker: {holder}"
        for before, after in itertools.pairwise(acquired):
            old = before[2]
            gave_up = [
                e for e in evs if e[2] == old and e[0] in ("lost", "released") and e[1] == before[1]
            ]
            death = killed.get(_pid_of(old))
            assert gave_up or (death is not None and death <= after[3]), (
                f"{loop}: generation {after[1]} taken by {after[2]} at {after[3]} while "
                f"{old} (generation {before[1]}) was neither killed nor had given it up"
            )
        takeovers[loop] = len(acquired) - 1
    return takeovers


def test_many_processes_with_workers_killed(pg_store: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    base = Platform(home=home, port=0).env(
        ONEP_DATABASE_URL=pg_store,
        ONEP_BACKUPS="false",
        ONEP_LOOP_LEASE_SECONDS="6",
        ONEP_HEALTH_INTERVAL_SECONDS="5",
        **SCALE_PORTS,
    )
    ports = [free_port(), free_port()]
    apis = [
        Proc(f"api{i}", ["up", "--api-only", "--port", str(p)], base, home / f"api{i}.log")
        for i, p in enumerate(ports)
    ]
    workers = [
        Proc(f"worker{i}", ["worker", "--count", "2"], base, home / f"worker{i}.log")
        for i in range(3)
    ]
    started = time.monotonic()
    chaos = Chaos(workers, pg_store)
    try:
        for p in [*apis, *workers]:  # all at once: their start-ups take turns on the store
            p.start()
        clients = [_client(p, home) for p in ports]
        _wait_image(clients[0])
        # Thirty 1-vCPU databases on a 2-core machine: more than the default CPU overcommit
        # (4) lets the scheduler place; the operator's knob is the host row's ratio (no API).
        _query(pg_store, "UPDATE hosts SET cpu_allocation_ratio = 20", commit=True)
        summary = _run_load(clients, chaos, pg_store)
        chaos.stop.set()
        chaos.thread.join(timeout=60)
        assert chaos.errors == []
        ended = _check_end_state(pg_store, summary)
        worker_pids = {pid for w in workers for pid in w.pids}
        api_pids = {pid for a in apis for pid in a.pids}
        events = _lease_events([p.log for p in [*apis, *workers]])
        assert {"reconciler", "health", "warm-keeper", "backup-scheduler"} <= set(events)
        takeovers = _check_leases(events, worker_pids, chaos.kills)
        holders = _query(pg_store, "SELECT name, holder FROM loop_leases")
        assert holders and all(_pid_of(h) not in api_pids for _, h in holders)
        print(
            f"\nscale-out: {summary['creates']} creates, {summary['deletes']} deletes through "
            f"two APIs, {len(chaos.kills)} SIGKILLs, {len(chaos.interrupted)} operations "
            f"resumed by another worker, loop takeovers {takeovers}, operations {ended}, "
            f"{time.monotonic() - started:.0f} s"
        )
        assert chaos.interrupted, "no kill hit a running operation: the test proved nothing"
    finally:
        chaos.stop.set()
        for p in [*workers, *apis]:
            p.stop()
        _remove_leftovers(pg_store)


def _client(port: int, home: Path) -> Client:
    token = ""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if (home / "admin-token").exists():
            token = (home / "admin-token").read_text().strip()
            c = Client(f"http://127.0.0.1:{port}", token)
            try:
                c.flavors.list()
                return c
            except Exception:
                c.close()
        time.sleep(0.5)
    raise AssertionError(f"the API on port {port} did not come up")


def _wait_image(c: Client, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        images = [i for i in c.images.list() if i.name == "postgresql-15"]
        if images and images[0].status == "READY":
            return
        assert not images or images[0].status != "ERROR", images
        time.sleep(1)
    raise AssertionError("the postgresql-15 image did not become READY")


def _run_load(clients: list[Client], chaos: Chaos, url: str) -> dict[str, Any]:
    """Create CREATES databases at once through both APIs, delete every DELETE_EVERY-th
    soon after its create was accepted (others still build), with the chaos running; until
    every operation has ended."""
    names = [f"s{i:02d}" for i in range(CREATES)]
    doomed = set(names[::DELETE_EVERY])
    rng = random.Random(5)
    delays = {n: rng.uniform(0, 15) for n in doomed}
    op_ids: list[str] = []
    lock = threading.Lock()

    def one(i: int, name: str) -> None:
        c = clients[i % 2]
        accepted = c.db.create(name, "container.small", size_gb=1)
        with lock:
            op_ids.append(accepted.operation.id)
        if name in doomed:
            time.sleep(delays[name])
            gone = clients[(i + 1) % 2].db.delete(name)  # through the other API
            with lock:
                op_ids.append(gone.operation.id)

    chaos.thread.start()
    with ThreadPoolExecutor(max_workers=10) as pool:
        for f in [pool.submit(one, i, n) for i, n in enumerate(names)]:
            f.result()
    deadline = time.monotonic() + DONE_WITHIN
    while _open_operations(url) and time.monotonic() < deadline:
        time.sleep(2)
    assert _open_operations(url) == 0, _query(
        url, "SELECT kind, status, steps FROM operations WHERE status IN ('PENDING','RUNNING')"
    )
    return {"creates": CREATES, "deletes": len(doomed), "ops": op_ids, "doomed": doomed}


def _check_end_state(url: str, summary: dict[str, Any]) -> dict[str, int]:
    """Returns how many operations of each kind ended, and how many were superseded."""
    mine = _query(url, "SELECT id FROM operations WHERE id = ANY(%s)", summary["ops"])
    assert len(mine) == summary["creates"] + summary["deletes"]
    deleted = {
        row[0]
        for row in _query(
            url,
            "SELECT id FROM db_instances WHERE deleted_at IS NOT NULL UNION "
            "SELECT id FROM instances WHERE deleted_at IS NOT NULL",
        )
    }
    counts: dict[str, int] = {}
    unexpected = []
    for op_id, kind, status, code, message, resource in _query(
        url, "SELECT id, kind, status, error_code, error_message, resource_id FROM operations"
    ):
        counts[f"{kind} {status}"] = counts.get(f"{kind} {status}", 0) + 1
        # The one failure the platform means: a create that a delete of the same database
        # overtook stops with `superseded` (the delete then removes what it made).
        if status != "SUCCEEDED" and not (
            (status, code) == ("FAILED", "superseded") and resource in deleted and message
        ):
            unexpected.append((op_id, kind, status, code, message))
    assert unexpected == [], unexpected
    dbs = _query(url, "SELECT name, status, instance_id, deleted_at FROM db_instances")
    assert {d[0] for d in dbs} == {f"s{i:02d}" for i in range(CREATES)}
    for name, status, _, deleted_at in dbs:
        want = "DELETED" if name in summary["doomed"] else "ACTIVE"
        assert status == want, (name, status)
        assert (deleted_at is not None) == (want == "DELETED")
    instances = _query(url, "SELECT id, deleted_at FROM instances")
    live = {i for i, deleted in instances if deleted is None}
    gone = {i for i, deleted in instances if deleted is not None}
    assert len(live) == CREATES - summary["deletes"], instances
    for instance_id in live:
        (container,) = podman_containers(instance_id)
        assert container["State"] == "running", container
    volumes = _names("volume", "ls")
    secrets = _names("secret", "ls")
    for instance_id in gone:
        assert podman_containers(instance_id) == [], instance_id
        assert not [v for v in volumes if v.startswith(f"onep-{instance_id}-")], instance_id
        assert f"onep-{instance_id}-bundle" not in secrets, instance_id
    return counts


def _names(*what: str) -> list[str]:
    """Names of ``podman volume ls`` / ``podman secret ls`` (Podman 4.3 has no JSON there)."""
    out = subprocess.run(
        ["podman", *what, "--format", "{{.Name}}"], capture_output=True, text=True, check=True
    ).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def _remove_leftovers(url: str) -> None:
    """Whatever this store's instances left on Podman: containers, volumes, bundle secrets."""
    try:
        ids = [row[0] for row in _query(url, "SELECT id FROM instances")]
    except psycopg.Error:
        return
    try:
        volumes = _names("volume", "ls")
    except subprocess.CalledProcessError:
        volumes = []
    for instance_id in ids:
        for c in podman_containers(instance_id):
            force_remove(c["Id"], check=False)
        mine = [v for v in volumes if v.startswith(f"onep-{instance_id}-")]
        if mine:
            subprocess.run(["podman", "volume", "rm", "-f", *mine], capture_output=True)
        subprocess.run(
            ["podman", "secret", "rm", f"onep-{instance_id}-bundle"], capture_output=True
        )
