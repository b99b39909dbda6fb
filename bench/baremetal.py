"""Bare-metal database create: ``db.create`` on an emulated bare-metal node, deploy by virtual
media included. Not run by default (each round is a full deploy under TCG, some 2.5 minutes,
then a cleaning): ``python -m bench baremetal``.

The `onep up` of this benchmark is its own (not shared with the other benchmarks) and enrolls
the nodes of the shared lab (``scripts/bmlab.sh up``; :data:`LAB_FILE`). Before it starts,
the bench waits (bounded) until the lab is free: no lab node running and no other `onep up`
enrolling the lab. Before each round it waits until every node is settled (enrolment and
cleaning done) and one is ``available``.

Timed: from just before ``client.db.create(name, flavor="baremetal.small", databases=["appdb"],
users=[app])`` until ``app`` logs in to ``appdb`` through the endpoint (always 127.0.0.1) with
psycopg and ``SELECT 1`` succeeds (tried every :data:`POLL_S`). The deploy is then split into
the phases of the issue, from the steps of the compute instance's ``instance.create.baremetal``
operation, the deploy agent's own figures (its final report, kept in the ``deploy_tokens``
table of the platform's SQLite store, read read-only) and when the bench saw each of the
agent's reports arrive (the same table, polled with the login):

* ``media_boot``: ``prepare`` + ``boot_ramdisk`` + the part of ``write`` until the agent's
  first report (its ``started``, once the ramdisk's network is up); when no report was seen,
  ``prepare`` + ``boot_ramdisk`` only.
* ``image_write``: the agent's ``write_s`` + ``verify_s``.
* ``write_rest``: the rest of the ``write`` step (manifest and bundle fetch, partitioning,
  config partition, the final report, and up to 2 s until the step polls it).
* ``disk_boot``: ``boot_disk`` + ``wait_ports``.
* ``engine_ready``: the ``db.create``'s ``agent`` + ``initialize`` steps.
* ``db_create``: the ``db.create`` operation, acceptance to end.

Then (not in the total) the db instance is deleted and the bench waits until the node is
``available`` again: the delete and the cleaning, timed and reported separately. One deploy
at a time; every connection goes to 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Collection
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import bmraw
from bench.common import (
    BenchError,
    PlatformProcess,
    Sample,
    Summary,
    aware,
    now,
    show,
    step_durations,
)
from bench.db import DATABASE, USER, try_login, wait_operation
from bench.vm import wait_quiet
from oneplatform.baremetal.states import NODES, NodeState
from oneplatform.config import Settings
from oneplatform.dbaas.datastores import get_datastore, get_version
from oneplatform.images.recipes import load_recipe
from oneplatform.images.wholedisk import disk_image_if_built
from oneplatform.ops.kinds import StepStatus
from oneplatform.schemas.nodes import NodeOut
from oneplatform.schemas.operations import OperationOut
from oneplatform.sdk.client import FINAL, ApiError, Client

NAME = "baremetal-deploy"
FLAVOR = "baremetal.small"
DATASTORE = "postgresql"
CREATE_KIND = "instance.create.baremetal"
DELETE_KIND = "instance.delete.baremetal"
LAB_FILE = Path("/var/lib/oneplatform/bmlab/nodes.json")  # what scripts/bmlab.sh up writes
POLL_S = 0.2  # between login attempts (and looks at the agent's reports)
OP_POLL_S = 0.5  # while waiting for the delete and the cleaning
NODE_POLL_S = 1.0
TIMEOUT_S = 900.0  # per round: create to login, unless --timeout says otherwise
ROUNDS = 2  # unless --rounds says otherwise
CLEAN_TIMEOUT_S = 900.0  # the delete and the cleaning, after each round
NODES_TIMEOUT_S = 900.0  # the lab nodes settled (enrolment: verify, inspect, clean)
LAB_WAIT_S = 600.0  # before `onep up`: for other users of the lab to be done
QUIET_WAIT_S = 600.0  # before each round: for other QEMUs to end
INTERRUPTED_WAIT_S = 120.0  # for the delete, when a round was interrupted (SIGTERM, ^C)
WATCH_S = 1.0  # how often the contention watch looks
# How far apart the db.create and its compute instance.create may be enqueued (they are made
# in one transaction).
SAME_REQUEST_S = 5.0
# The steps' names in the two operations.
MEDIA_STEPS = ("prepare", "boot_ramdisk")
DISK_BOOT_STEPS = ("boot_disk", "wait_ports")
ENGINE_STEPS = ("agent", "initialize")


# -- the shared lab ----------------------------------------------------------------------------
def lab_node_names() -> list[str]:
    try:
        lab = json.loads(LAB_FILE.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read {LAB_FILE} ({exc}): run scripts/bmlab.sh up") from exc
    return [str(n["name"]) for n in lab.get("nodes", [])]


def virsh(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["virsh", "-q", "-c", Settings().libvirt_uri, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"virsh {' '.join(args)} timed out after {timeout:g}s") from exc


def running_lab_nodes(names: Collection[str]) -> list[str]:
    proc = virsh("list", "--name", "--state-running")
    if proc.returncode != 0:
        raise BenchError(f"virsh list failed: {proc.stderr.strip()}")
    return sorted(set(proc.stdout.split()) & set(names))


def _argv(pid: str) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def lab_platforms(exclude: Collection[int] = ()) -> list[int]:
    """Pids of the `onep up` processes that enroll the lab: ONEP_BMLAB_FILE is the lab's file,
    or unset (it is their default)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        argv = _argv(entry.name)
        if not any(
            os.path.basename(a) == b"onep" and b == b"up" for a, b in itertools.pairwise(argv)
        ):
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        value = next((e[16:] for e in environ if e.startswith(b"ONEP_BMLAB_FILE=")), None)
        if value is None or _same_file(value.decode(errors="replace"), entry):
            found.append(int(entry.name))
    return found


def _same_file(value: str, proc_dir: Path) -> bool:
    path = Path(value)
    if not path.is_absolute():
        with suppress(OSError):
            path = Path(os.readlink(proc_dir / "cwd")) / path
    try:
        return path.resolve() == LAB_FILE.resolve()
    except OSError:
        return False


def wait_lab_free(names: Collection[str], timeout: float) -> None:
    deadline = now() + timeout
    announced = False
    while True:
        nodes, others = running_lab_nodes(names), lab_platforms()
        if not nodes and not others:
            return
        busy = (
            f"lab nodes running: {nodes or 'none'}; other `onep up` on the lab: {others or 'none'}"
        )
        if now() > deadline:
            raise BenchError(f"the bare-metal lab is still busy after {timeout:g}s ({busy})")
        if not announced:
            print(f"{NAME}: waiting for the bare-metal lab to be free ({busy})...", flush=True)
            announced = True
        time.sleep(5.0)


def platform_env() -> dict[str, str]:
    """Before this benchmark's own `onep up`: wait for the lab to be free; its environment."""
    if shutil.which("virsh") is None:
        raise BenchError(f"{NAME} needs virsh (run scripts/setup.sh)")
    wait_lab_free(lab_node_names(), LAB_WAIT_S)
    return {"ONEP_BMLAB_FILE": str(LAB_FILE)}


def guest_name(argv: list[bytes]) -> str | None:
    """The libvirt domain a QEMU runs (``-name guest=NAME,...``), if it says."""
    for flag, value in itertools.pairwise(argv):
        if flag == b"-name":
            text = value.decode(errors="replace")
            return text.removeprefix("guest=").split(",", 1)[0]
    return None


class LabWatch:
    """Notes, while a round runs, every QEMU but the node's own (another VM skews the figures:
    the guests are emulated) and every other `onep up` enrolling the lab."""

    def __init__(self, own_platform: int | None) -> None:
        self.node: str | None = None  # the round's node, once known
        self.own_platform = own_platform
        self.qemus: dict[int, str] = {}
        self.platforms: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lab-watch", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(WATCH_S):
            own = () if self.own_platform is None else (self.own_platform,)
            self.platforms.update(lab_platforms(own))
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                argv = _argv(entry.name)
                if not argv or not os.path.basename(argv[0]).startswith(b"qemu-system"):
                    continue
                guest = guest_name(argv) or "?"
                if self.node is not None and guest != self.node:
                    self.qemus.setdefault(int(entry.name), guest)

    def __enter__(self) -> LabWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def report(self) -> dict[str, Any]:
        qemus = [{"pid": p, "guest": g} for p, g in sorted(self.qemus.items())]
        return {"other_qemus": qemus, "other_lab_platforms": sorted(self.platforms)}


# -- the platform's store, read-only -----------------------------------------------------------
class StoreReader:
    """Read-only queries of the platform's SQLite store (a connection per query)."""

    def __init__(self, path: Path) -> None:
        self.uri = f"file:{path}?mode=ro"

    def rows(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        try:
            with closing(sqlite3.connect(self.uri, uri=True, timeout=5.0)) as conn:
                return list(conn.execute(sql, args).fetchall())
        except sqlite3.Error:
            return []

    def node_of(self, instance_id: str) -> str | None:
        rows = self.rows("SELECT name FROM nodes WHERE instance_id = ?", instance_id)
        return str(rows[0][0]) if rows else None

    def operation_status(self, op_id: str) -> tuple[str, str] | None:
        rows = self.rows("SELECT status, error_message FROM operations WHERE id = ?", op_id)
        return (str(rows[0][0]), str(rows[0][1] or "")) if rows else None

    def token(self, instance_id: str, purpose: str) -> tuple[str, dict[str, Any]] | None:
        """The status and report of the instance's newest token for ``purpose``."""
        rows = self.rows(
            "SELECT status, report FROM deploy_tokens WHERE instance_id = ? AND purpose = ? "
            "ORDER BY created_at DESC LIMIT 1",
            instance_id,
            purpose,
        )
        if not rows:
            return None
        try:
            report = json.loads(rows[0][1]) if rows[0][1] else {}
        except ValueError:
            report = {}
        return str(rows[0][0]), report if isinstance(report, dict) else {}


def number(report: dict[str, Any], key: str) -> float | None:
    """A figure of the agent's report (its values are strings)."""
    try:
        return float(report[key])
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class AgentReports:
    """When the bench first saw each report stage of the deploy agent (``now()``, and the wall
    clock in UTC), with the guest's uptime the report carried."""

    seen: dict[str, tuple[float, dt.datetime, float | None]] = field(default_factory=dict)

    def look(self, store: StoreReader, instance_id: str) -> None:
        token = store.token(instance_id, "deploy")
        if token is None:
            return
        status, report = token
        stage = str(report.get("stage", ""))
        if status != "waiting" and stage and stage not in self.seen:
            self.seen[stage] = (now(), dt.datetime.now(dt.UTC), number(report, "uptime_s"))

    def first(self) -> tuple[str, float, dt.datetime, float | None] | None:
        if not self.seen:
            return None
        stage, (t, wall, uptime) = min(self.seen.items(), key=lambda i: i[1][0])
        return stage, t, wall, uptime


# -- one round ---------------------------------------------------------------------------------
@dataclass
class RoundState:
    """What a round made, for its cleanup."""

    db_id: str | None = None
    compute_id: str | None = None
    node: str | None = None


def find_compute_create(client: Client, db_op: OperationOut) -> OperationOut | None:
    """The compute instance's create: enqueued with the db.create (one deploy at a time)."""
    created = aware(db_op.created_at)
    near = [
        (abs((aware(op.created_at) - created).total_seconds()), op)
        for op in client.operations.list()
        if op.kind == CREATE_KIND
    ]
    near = [c for c in near if c[0] <= SAME_REQUEST_S]
    return min(near, key=lambda c: c[0])[1] if near else None


def step_times(op: OperationOut) -> dict[str, tuple[dt.datetime, dt.datetime]]:
    """Each finished step's first start and finish (UTC)."""
    out = {}
    for step in op.steps:
        if step.started_at and step.finished_at:
            start = aware(dt.datetime.fromisoformat(step.started_at))
            out[step.name] = (start, aware(dt.datetime.fromisoformat(step.finished_at)))
    return out


def breakdown(
    total: float,
    compute: OperationOut,
    db_op: OperationOut,
    agent: AgentReports,
    final: dict[str, Any],
) -> tuple[dict[str, float], str]:
    """The deploy's phases (seconds; see the module's doc) and how media_boot was told."""
    steps = {k: (b - a).total_seconds() for k, (a, b) in step_times(compute).items()}
    db_steps = {k: (b - a).total_seconds() for k, (a, b) in step_times(db_op).items()}
    write_s, verify_s = number(final, "write_s"), number(final, "verify_s")
    out: dict[str, float] = {"total": total}
    if "image" in steps:
        out["image"] = steps["image"]
    media = sum(steps.get(s, 0.0) for s in MEDIA_STEPS)
    method = "prepare + boot_ramdisk"
    first = agent.first()
    write = step_times(compute).get("write")
    until_report = 0.0
    if first is not None and write is not None:
        until_report = (first[2] - write[0]).total_seconds()
        media += until_report
        method = f"prepare + boot_ramdisk + write until the agent's first report ({first[0]})"
    out["media_boot"] = media
    if write_s is not None and verify_s is not None:
        out["image_write"] = write_s + verify_s
        out["write_s"], out["verify_s"] = write_s, verify_s
        if "write" in steps:
            out["write_rest"] = steps["write"] - until_report - write_s - verify_s
    out["disk_boot"] = sum(steps.get(s, 0.0) for s in DISK_BOOT_STEPS)
    out["engine_ready"] = sum(db_steps.get(s, 0.0) for s in ENGINE_STEPS)
    if db_op.finished_at is not None:
        out["db_create"] = (aware(db_op.finished_at) - aware(db_op.created_at)).total_seconds()
    if compute.finished_at is not None:
        deploy = (aware(compute.finished_at) - aware(compute.created_at)).total_seconds()
        out["deploy_op"] = deploy
    return out, method


def measure_deploy(
    platform: PlatformProcess,
    store: StoreReader,
    state: RoundState,
    watch: LabWatch,
    name: str,
    rnd: int,
    timeout: float,
) -> tuple[Sample, dict[str, Any]]:
    client = platform.client
    password = secrets.token_urlsafe(18)
    users = [{"name": USER, "password": password, "databases": [DATABASE]}]
    t0 = now()
    deadline = t0 + timeout
    accepted = client.db.create(name, flavor=FLAVOR, databases=[DATABASE], users=users)
    t_accepted = now()
    state.db_id, op_id = accepted.instance.id, accepted.operation.id
    compute_op = find_compute_create(client, accepted.operation)
    if compute_op is None:
        raise BenchError(f"no {CREATE_KIND} operation came with the db.create of {name}")
    state.compute_id = compute_op.resource_id
    state.node = watch.node = store.node_of(state.compute_id)
    endpoint = client.db.get(state.db_id).endpoint
    while endpoint is None:  # known at once today; bounded if that ever changes
        if now() > deadline:
            raise BenchError(f"db instance {name} has no endpoint after {timeout:g}s")
        time.sleep(POLL_S)
        endpoint = client.db.get(state.db_id).endpoint
    t_endpoint = now()
    agent = AgentReports()
    first_seen: dict[str, float] = {}
    while True:
        # Always 127.0.0.1, whatever the endpoint says (the lab forwards loopback ports).
        outcome = try_login(endpoint.port, password)
        t_login = now()
        if outcome is None:
            break
        first_seen.setdefault(outcome, t_login)
        agent.look(store, state.compute_id)
        status = store.operation_status(op_id)
        if status is not None and status[0] == "FAILED":
            raise BenchError(f"the db.create of {name} {status[0]}: {status[1]}")
        if t_login > deadline:
            raise BenchError(
                f"{USER}@{DATABASE} on 127.0.0.1:{endpoint.port} could not log in in "
                f"{timeout:g}s (last: {outcome}; seen: {', '.join(first_seen)})"
            )
        time.sleep(POLL_S)
    # -- not timed from here on
    db_op = wait_operation(client, op_id, now() + 120.0)
    if db_op.status != "SUCCEEDED":
        raise BenchError(
            f"create of {name} {db_op.status}: {db_op.error_code} {db_op.error_message}"
        )
    compute_op = client.operations.get(compute_op.id)
    token = store.token(state.compute_id, "deploy")
    final = token[1] if token else {}
    total = t_login - t0
    phases = {"api_accepted": t_accepted - t0, "endpoint_known": t_endpoint - t0}
    phases |= {f"agent_{stage}": t - t0 for stage, (t, _, _) in agent.seen.items()}
    phases |= {f"first_{k}": t - t0 for k, t in sorted(first_seen.items(), key=lambda i: i[1])}
    phases |= step_durations(compute_op, f"srv.{CREATE_KIND}.")
    phases |= step_durations(db_op, "srv.db.create.")
    parts, method = breakdown(total, compute_op, db_op, agent, final)
    info = {
        "db_instance_id": state.db_id,
        "compute_instance_id": state.compute_id,
        "node": state.node,
        "endpoint": {"host": endpoint.host, "port": endpoint.port},
        "phases": parts,
        "media_boot_measured_as": method,
        "agent_final_report": {k: v for k, v in final.items() if k != "sha256"},
        "agent_reports_seen": {
            stage: {"at": t - t0, "guest_uptime_s": up} for stage, (t, _, up) in agent.seen.items()
        },
    }
    return Sample("deploy", rnd, total, phases), info


def delete_and_clean(
    client: Client, store: StoreReader, state: RoundState, rnd: int, timeout: float
) -> tuple[Sample, dict[str, Any]] | None:
    """Delete the db instance and wait until its node is ``available`` again (timed)."""
    if state.db_id is None:
        return None
    t0 = now()
    deadline = t0 + timeout
    accepted = client.db.delete(state.db_id)
    op = wait_final(client, accepted.operation.id, deadline)
    if op.status != "SUCCEEDED":
        raise BenchError(f"delete of db instance {state.db_id}: {op.error_code} {op.error_message}")
    t_deleted = now()
    wait_nodes(client, deadline - now(), node=state.node, quiet=True)
    seconds = now() - t0
    phases = {"db_deleted": t_deleted - t0}
    phases |= step_durations(op, "srv.db.delete.")
    info: dict[str, Any] = {}
    if state.compute_id is not None:
        compute_ops = client.operations.list(resource_id=state.compute_id)
        delete = next((o for o in compute_ops if o.kind == DELETE_KIND), None)
        if delete is not None:
            phases |= step_durations(delete, f"srv.{DELETE_KIND}.")
        token = store.token(state.compute_id, "clean")
        if token is not None and number(token[1], "clean_s") is not None:
            info["agent_clean_s"] = number(token[1], "clean_s")
    state.db_id = None  # cleaned up
    return Sample("clean", rnd, seconds, phases), info


def wait_final(client: Client, op_id: str, deadline: float) -> OperationOut:
    while True:
        op = client.operations.get(op_id)
        if op.status in FINAL:
            return op
        if now() > deadline:
            raise BenchError(f"operation {op.kind} still {op.status} (step: {current_step(op)})")
        time.sleep(OP_POLL_S)


def current_step(op: OperationOut) -> str:
    step = next((s for s in op.steps if s.status != StepStatus.DONE.value), None)
    return f"{step.name}: {step.message}" if step else "-"


SETTLED = frozenset(s.value for s in NodeState if NODES.is_stable(s) and s is not NodeState.ENROLL)


def wait_nodes(
    client: Client, timeout: float, node: str | None = None, quiet: bool = False
) -> list[NodeOut]:
    """Until every node is settled and one (``node`` when given) is ``available``."""
    deadline = now() + timeout
    announced = quiet
    while True:
        nodes = client.nodes.list()
        states = {n.name: n.state for n in nodes}
        wanted = [n for n in nodes if node is None or n.name == node]
        if nodes and all(n.state in SETTLED for n in nodes):
            if any(n.state == NodeState.AVAILABLE.value for n in wanted):
                return nodes
            errors = {n.name: n.last_error for n in wanted if n.last_error}
            raise BenchError(f"no lab node is available: {states} {errors or ''}")
        if now() > deadline:
            raise BenchError(f"the lab nodes did not settle in {timeout:g}s: {states}")
        if not announced:
            print(f"  waiting for the lab nodes to settle: {states}", flush=True)
            announced = True
        time.sleep(NODE_POLL_S)


def power_off_leftovers(client: Client, used: Collection[str]) -> None:
    """Last resort: a node this run deployed to that is not ``available`` and still runs is
    powered off (through virsh), so the next user of the lab finds it off. Never raises."""
    try:
        states = {n.name: n.state for n in client.nodes.list()}
        for name in sorted(used):
            if states.get(name) == NodeState.AVAILABLE.value:
                continue
            print(f"  warning: lab node {name} is {states.get(name)!r} after the run", flush=True)
            if name in running_lab_nodes([name]):
                print(f"  powering {name} off (virsh destroy)", flush=True)
                virsh("destroy", name)
    except (BenchError, ApiError, OSError) as exc:
        print(f"  warning: checking the lab nodes after the run failed: {exc}", flush=True)


# -- the benchmark -----------------------------------------------------------------------------
def run(platform: PlatformProcess, rounds: int, timeout: float) -> dict[str, Any]:
    client = platform.client
    flavor = next((f for f in client.flavors.list() if f.name == FLAVOR), None)
    if flavor is None:
        raise BenchError(f"the platform has no flavor {FLAVOR!r} (onep up's log says why)")
    image = get_version(get_datastore(DATASTORE), None).image
    disk = disk_image_if_built(load_recipe(image), Settings().images_dir)
    if disk is None:
        print(
            f"  warning: the whole-disk image of {image} is not built: round 1's image step "
            "builds it",
            flush=True,
        )
    store = StoreReader(platform.home / "oneplatform.db")
    run_id = uuid.uuid4().hex[:8]
    print(
        f"{NAME}: flavor {FLAVOR} ({flavor.vcpus} vCPU, {flavor.ram_mb} MB, {flavor.disk_gb} GB), "
        f"image {image}, lab {LAB_FILE}, {rounds} round(s), {timeout:g}s per deploy",
        flush=True,
    )
    nodes = wait_nodes(client, NODES_TIMEOUT_S)
    print(f"  lab nodes: {', '.join(f'{n.name} ({n.state})' for n in nodes)}", flush=True)
    samples: list[Sample] = []
    records: list[dict[str, Any]] = []
    used: set[str] = set()
    own_pid = platform.proc.pid if platform.proc is not None else None
    try:
        for rnd in range(1, rounds + 1):
            wait_nodes(client, NODES_TIMEOUT_S)
            running = wait_quiet(QUIET_WAIT_S)
            if running:
                print(f"  warning: gave up waiting for QEMU pids {running}", flush=True)
            state = RoundState()
            record: dict[str, Any] = {"round": rnd}
            with LabWatch(own_pid) as watch:
                try:
                    name = f"bench-bm-{run_id}-{rnd}"
                    deploy, info = measure_deploy(platform, store, state, watch, name, rnd, timeout)
                except BaseException as exc:
                    if state.node:
                        used.add(state.node)
                    # Interrupted: delete, but do not wait out a whole cleaning.
                    wait = CLEAN_TIMEOUT_S if isinstance(exc, Exception) else INTERRUPTED_WAIT_S
                    with suppress(Exception):
                        delete_and_clean(client, store, state, rnd, wait)
                    raise
                if state.node:
                    used.add(state.node)
                show(deploy)
                show_phases(info["phases"])
                cleaned = delete_and_clean(client, store, state, rnd, CLEAN_TIMEOUT_S)
            samples.append(deploy)
            # The raw baseline, right after (alternating keeps the machine's noise fair).
            wait_quiet(QUIET_WAIT_S)
            raw = bmraw.raw_round(Settings(), rnd)
            show(raw)
            samples.append(raw)
            record |= info
            if cleaned is not None:
                show(cleaned[0])
                samples.append(cleaned[0])
                record["clean"] = {"seconds": cleaned[0].seconds, **cleaned[1]}
            record["contention"] = watch.report()
            if watch.qemus or watch.platforms:
                print(f"  {'':<9} warning: not alone on the machine: {watch.report()}", flush=True)
            records.append(record)
    finally:
        power_off_leftovers(client, used)

    deploys = [s for s in samples if s.label == "deploy"]
    cleans = [s for s in samples if s.label == "clean"]
    raws = [s for s in samples if s.label == "raw"]
    stats = {
        "deploy": Summary.of([s.seconds for s in deploys]),
        "raw": Summary.of([s.seconds for s in raws]),
    }
    ratio = stats["deploy"].median / stats["raw"].median
    if cleans:
        stats["clean"] = Summary.of([s.seconds for s in cleans])
    phase_medians = medians([r["phases"] for r in records])
    clean_medians = medians([c.phases for c in cleans])
    print(f"{NAME} summary (seconds, {rounds} round(s)):")
    for label, st in stats.items():
        print(f"  {label:<8} median {st.median:.3f}  min {st.min:.3f}  max {st.max:.3f}")
    print(f"  ratio median(deploy)/median(raw) = {ratio:.2f}")
    print("  raw phases, medians:")
    for key, value in medians([s.phases for s in raws]).items():
        print(f"    {key:<40} {value:8.3f}")
    print("  deploy phases, medians:")
    for key, value in phase_medians.items():
        print(f"    {key:<40} {value:8.3f}")
    if clean_medians:
        print("  delete and cleaning, medians:")
        for key, value in clean_medians.items():
            print(f"    {key:<40} {value:8.3f}")
    return {
        "benchmark": NAME,
        "flavor": FLAVOR,
        "vcpus": flavor.vcpus,
        "ram_mb": flavor.ram_mb,
        "disk_gb": flavor.disk_gb,
        "image": image,
        "disk_image": {"name": disk.path.name, "bytes": disk.size} if disk else None,
        "lab_file": str(LAB_FILE),
        "accelerator": "tcg",
        "rounds": rounds,
        "timeout_seconds": timeout,
        "clean_timeout_seconds": CLEAN_TIMEOUT_S,
        "poll_seconds": {"login": POLL_S, "agent_reports": POLL_S, "nodes": NODE_POLL_S},
        "measures": {
            "deploy": f"db.create ({FLAVOR}) -> {USER} logs in to {DATABASE} on 127.0.0.1 "
            "through the endpoint, SELECT 1",
            "clean": "db.delete -> the node is available again (not in the deploy's total)",
            "raw": "bench/bmraw.py: the same deploy ISO in a plain QEMU writes the whole image "
            "with dd, then its disk boots until the admin logs in to PostgreSQL",
            "phases": {
                "media_boot": "prepare + boot_ramdisk + write until the agent's first report",
                "image_write": "the agent's write_s + verify_s",
                "write_rest": "the rest of the write step",
                "disk_boot": "boot_disk + wait_ports",
                "engine_ready": "db.create agent + initialize",
                "db_create": "the db.create operation, acceptance to end",
                "deploy_op": f"the {CREATE_KIND} operation, acceptance to end",
            },
        },
        "samples": samples,
        "rounds_detail": records,
        "stats": stats,
        "ratio_median_deploy_over_raw": ratio,
        "phase_medians": phase_medians,
        "clean_medians": clean_medians,
    }


def show_phases(phases: dict[str, float]) -> None:
    text = "  ".join(f"{k}={v:.3f}s" for k, v in phases.items() if k != "total")
    print(f"  {'':<9} {'':<8}            phases: {text}", flush=True)


def medians(rows: list[dict[str, float]]) -> dict[str, float]:
    """Median of every key present in all the rows, in first-seen order."""
    if not rows:
        return {}
    keys = [k for k in rows[0] if all(k in r for r in rows)]
    return {k: statistics.median(r[k] for r in rows) for k in keys}
