"""All three compute types in one platform, end to end, against the real Podman, libvirt and
the Redfish emulator over the bare-metal lab.

The README's tour runs as written (every ``onep`` line of its two tour blocks, in order) and
leaves a container, a VM and a bare-metal database alive at once, each reached with psql.
Each is backed up and restored onto a container. Then they move at once, live, while a
client writes through each one's endpoint: container -> VM, VM -> bare metal, bare metal ->
container (every acknowledged write kept; the write gap recorded). Then each one's compute
is broken behind the platform's back — ``podman kill``, ``podman rm -f``, the VM's QEMU
killed, the node powered off through its BMC — and the platform itself is killed with -9:
every time the database must come back HEALTHY with its data, and the time it took is
recorded (printed at the end of the run). Then the VM and the bare-metal database each get
a replica on a container and fail over at once (the VM's QEMU killed, the node powered off
at its BMC), and a VM primary frozen with ``virsh suspend`` is fenced, never writable again
(write gaps recorded; no write lost beyond the last instant). Then the bare-metal delete
cleans the node (which held a replica since the failover),
restores onto bare metal and VMs whose platform was killed mid-deploy resume, the remaining
(source, target) pairs of the three compute types restore at once, and warm instances are
claimed on each compute type.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from oneplatform.baremetal.bmc import PowerAction
from oneplatform.baremetal.redfish import RedfishBmc
from tests.e2e.clients import mariadb, redis
from tests.e2e.conftest import (
    LAB_PORTS,
    Platform,
    free_port,
    podman_containers,
    record_timing,
    reset_timings,
)
from tests.e2e.writer import MariaDbWriter, RedisWriter, Writer, under_writer
from tests.podman import force_remove

pytestmark = pytest.mark.e2e
LAB = Path("/var/lib/oneplatform/bmlab/nodes.json")
README = Path(__file__).resolve().parents[2] / "README.md"
ALICE_PW = "S3cret-pass"  # the README's
DATABASES = {"pgc": "container", "pgvm": "vm", "pgbm": "baremetal"}
# Which database is on which compute type: as the tour made them, until the moves.
ON = {compute_type: name for name, compute_type in DATABASES.items()}
T = TypeVar("T")


def _alice_dsn(endpoint: dict[str, Any]) -> str:
    return (
        f"host={endpoint['host']} port={endpoint['port']} user=alice password={ALICE_PW} "
        "dbname=appdb connect_timeout=5"
    )


def _require_lab() -> None:
    if LAB.exists():
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the bare-metal lab is missing ({LAB}): run scripts/bmlab.sh up")
    pytest.skip("the bare-metal lab is not set up (scripts/bmlab.sh up)")


def _nodes(p: Platform) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in p.json("node", "list")}


def _wait_nodes(p: Platform, state: str, timeout: float = 600) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = _nodes(p)
        if nodes and all(n["state"] == state for n in nodes.values()):
            return nodes
        assert not any("failed" in n["state"] for n in nodes.values()), nodes
        assert time.monotonic() < deadline, nodes
        time.sleep(2)


def _free_deploy_port() -> int:
    """A port for the deploy listener where the lab's firewall lets nodes in (8400-8499)."""
    gateway = json.loads(LAB.read_text())["provisioning"]["gateway"]
    for port in range(8400, 8500):
        with socket.socket() as s:
            try:
                s.bind((gateway, port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port in 8400-8499 on {gateway}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    _require_lab()
    reset_timings("healing", "warm", "create", "storage")
    p = Platform(
        home=tmp_path_factory.mktemp("onep-lab"),
        port=free_port(),
        extra_env={
            **LAB_PORTS,
            "ONEP_BMLAB_FILE": str(LAB),
            "ONEP_DEPLOY_PORT": str(_free_deploy_port()),
            "ONEP_HEALTH_INTERVAL_SECONDS": "2",
            "ONEP_RECONCILE_INTERVAL_SECONDS": "3",
        },
    )
    try:
        p.start()
        p.wait_images_ready()
        yield p
    finally:
        _parallel(
            lambda name: p.run("db", "delete", name, "--wait", timeout=900, check=False),
            DATABASES,
        )
        p.stop()


def tour() -> list[list[str]]:
    """Every ``onep`` command of the README's tour blocks, as argv, in order."""
    text = README.read_text()
    section = text[text.index("## A short tour") :]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.splitlines():
            argv = shlex.split(line, comments=True)
            if argv and argv[0] == "onep":
                commands.append(argv[1:])
    return commands


def _psql(p: Platform, db: str, sql: str) -> str:
    """``onep db connect`` as alice: the engine's own client on the database's endpoint."""
    out = p.run(
        "db", "connect", db, "--database", "appdb", "--user", "alice", "--", "-tAc", sql,
        PGPASSWORD=ALICE_PW,
    )  # fmt: skip
    return out.stdout.strip()


def _instance_of(p: Platform, db: str) -> str:
    with sqlite3.connect(p.home / "oneplatform.db") as conn:
        (instance_id,) = conn.execute(
            "SELECT instance_id FROM db_instances WHERE name = ? AND deleted_at IS NULL", (db,)
        ).fetchone()
    return str(instance_id)


def _parse(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _healthy_again(p: Platform, db: str, since: dt.datetime, timeout: float = 900) -> float:
    """Seconds until ``db`` is ACTIVE and HEALTHY by a health check made after ``since``."""
    start = time.monotonic()
    while True:
        shown = p.json("db", "show", db)
        checked = shown.get("health_checked_at")
        if (
            shown["status"] == "ACTIVE"
            and shown["health"] == "HEALTHY"
            and checked
            and _parse(checked) > since
        ):
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, shown
        time.sleep(0.5)


def _repairs(p: Platform, instance_id: str, since: dt.datetime) -> list[dict[str, Any]]:
    """The repair operations the platform ran on the instance after ``since``, newest first."""
    return [
        op
        for op in p.json("operation", "list")
        if op["resource_id"] == instance_id
        and op["kind"] == "instance.repair"
        and _parse(op["created_at"]) > since
    ]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- enrolment and the tour ----------------------------------------------------------------------
def test_enrolled_nodes_become_available(lab: Platform) -> None:
    nodes = _wait_nodes(lab, "available")
    assert set(nodes) >= {"onep-bm-0", "onep-bm-1"}
    for node in nodes.values():
        assert node["pool"] == "baremetal" and node["instance"] is None
        assert node["power_state"] in ("stopped", "running")
        inventory = lab.json("node", "show", node["name"])["inventory"]
        assert inventory["cpus"] >= 1 and inventory["memory_mb"] >= 1024
        assert inventory["disks"] and "cd" in [t.lower() for t in inventory["virtual_media_types"]]
    on = lab.json("node", "power", "on", "onep-bm-1")
    assert on["power_state"] == "running"
    off = lab.json("node", "power", "off", "onep-bm-1")
    assert off["power_state"] == "stopped" and off["state"] == "available"
    types = {t["name"]: t for t in lab.json("compute-type", "list")}
    caps = {c["name"]: c for c in types["baremetal"]["capabilities"]}
    for name in ("boot_device", "virtual_media", "forced_reboot", "grow_storage"):
        assert caps[name]["supported"] is True
    assert "end" in caps["grow_storage"]["limit"]  # of the node's disk: the most it can be
    for name in ("snapshot", "resize", "exec"):
        assert caps[name]["supported"] is False and caps[name]["reason"]


def test_the_readme_tour_runs_start_to_end(lab: Platform) -> None:
    commands = tour()
    assert len(commands) > 25, commands
    for argv in commands:
        if "baremetal.small" in argv:
            _wait_nodes(lab, "available")
        lab.run(*argv, timeout=1500)
    dbs = {d["name"]: d for d in lab.json("db", "list")}
    assert {name: dbs[name]["compute_type"] for name in DATABASES} == DATABASES
    for name in DATABASES:
        assert dbs[name]["status"] == "ACTIVE" and dbs[name]["health"] == "HEALTHY", dbs[name]
        assert dbs[name]["connection_uri"].startswith("postgresql://admin@")
        _psql(lab, name, "CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
        assert _psql(lab, name, "SELECT x FROM t") == "42"
    assert _psql(lab, "pgvm", "SHOW shared_buffers") == "256MB"  # vm.small: 1024 MB / 4
    active = [n for n in _nodes(lab).values() if n["state"] == "active"]
    assert len(active) == 1 and active[0]["power_state"] == "running"


GIB = 1024**3
GROW_SQL = "INSERT INTO grow SELECT g, md5(g::text) FROM generate_series({}, {}) g"
GROW_SUM = "SELECT count(*) || ':' || md5(string_agg(v, ',' ORDER BY id)) FROM grow"


def test_storage_grows_on_a_node_online_and_on_a_container(lab: Platform) -> None:
    """The tour's bare-metal database: its data partition was made 1 GB at deploy (the rest
    of the node's disk left free, its end recorded as max_size_gb); it grows online to 2 GB
    while a client writes through its endpoint — the partition and then its ext4, in the
    guest — with its rows intact and every acknowledged write kept; the filesystem the
    guest agent reports is bigger; more rows go in after. Past the disk and a shrink are
    refused up front. A container grows with its data (a VM's: tests/e2e/test_engines.py)."""
    deadline = time.monotonic() + 120
    while not (before := lab.json("db", "show", "pgbm"))["storage"]:  # the agent's figures
        assert time.monotonic() < deadline, before
        time.sleep(2)
    most = before["max_size_gb"]
    assert (before["status"], before["size_gb"]) == ("ACTIVE", 1) and 2 <= most < 8, before
    assert before["storage"]["total_bytes"] <= GIB  # the partition's size, not the disk's
    _psql(lab, "pgbm", "CREATE TABLE grow (id int PRIMARY KEY, v text)")
    _psql(lab, "pgbm", GROW_SQL.format(1, 20000))
    rows = _psql(lab, "pgbm", GROW_SUM)
    engine_started = _psql(lab, "pgbm", "SELECT pg_postmaster_start_time()")
    refused = lab.run("db", "resize", "pgbm", "--size-gb", str(most + 1), check=False)
    assert refused.returncode == 1 and "no_room_on_disk" in refused.stderr, refused.stderr
    assert lab.json("db", "show", "pgbm")["status"] == "ACTIVE"
    writer = Writer.running(_alice_dsn(before["endpoint"]), 0.5)
    started = time.monotonic()
    try:
        grown = lab.json("db", "resize", "pgbm", "--size-gb", "2", "--wait", timeout=900)
        took = time.monotonic() - started
        writer.wait_for_writes(3, time.monotonic())
    finally:
        writer.stop()
    record_timing("storage", "grow 1 -> 2 GB online (bare metal)", took)
    assert (grown["status"], grown["size_gb"], grown["max_size_gb"]) == ("ACTIVE", 2, most)
    total = grown["storage"]["total_bytes"]  # as the guest agent reported it when grown
    assert 1.5 * GIB < total <= 2 * GIB, grown["storage"]
    assert total > before["storage"]["total_bytes"] + GIB // 2
    assert writer.missing() == [] and writer.gap() < 10.0, (writer.gap(), writer.errors[-3:])
    assert _psql(lab, "pgbm", "SELECT pg_postmaster_start_time()") == engine_started  # online
    assert _psql(lab, "pgbm", GROW_SUM) == rows  # the rows intact
    _psql(lab, "pgbm", GROW_SQL.format(20001, 40000))  # and more go in
    assert _psql(lab, "pgbm", "SELECT count(*) FROM grow") == "40000"
    assert _psql(lab, "pgbm", "SELECT x FROM t") == "42"
    shrink = lab.run("db", "resize", "pgbm", "--size-gb", "1", check=False)
    assert shrink.returncode == 1 and "storage_cannot_shrink" in shrink.stderr
    grown = lab.json("db", "resize", "pgc", "--size-gb", "2", "--wait")
    assert (grown["status"], grown["size_gb"]) == ("ACTIVE", 2)
    assert _psql(lab, "pgc", "SELECT x FROM t") == "42"


PAIRS_SQL = (
    "CREATE TABLE pairs AS SELECT g AS id, md5(random()::text) AS v FROM generate_series(1, 5000) g"
)
CHECKSUM_SQL = (
    "SELECT count(*) || ':' || md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM pairs"
)
CHECKSUMS: dict[str, str] = {}  # source database -> its table's checksum when backed up


def _parallel(fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]:
    """``fn`` over ``items`` at once (threads: each call is CLI processes and waiting)."""
    with ThreadPoolExecutor(max_workers=6) as pool:
        return list(pool.map(fn, items))


def _restore(lab: Platform, source: str, flavor: str) -> None:
    """``source``'s backup restored onto ``flavor``: its table identical, its users there;
    the time is recorded, the copy deleted."""
    compute_type = flavor.split(".")[0]
    name = f"{source}-on-{compute_type[:2]}"
    started = time.monotonic()
    lab.run(
        "db", "create", name, "--restore", f"{source}-full", "--flavor", flavor, "--wait",
        timeout=1500,
    )  # fmt: skip
    record_timing("restore", f"{DATABASES[source]} -> {compute_type}", time.monotonic() - started)
    assert lab.json("db", "show", name)["compute_type"] == compute_type
    assert _psql(lab, name, CHECKSUM_SQL) == CHECKSUMS[source]  # as alice: the source's user
    lab.run("db", "delete", name, "--wait", timeout=900)


def test_every_compute_type_backs_up_and_restores_onto_a_container(lab: Platform) -> None:
    """pgBackRest in each guest reaches the store by its compute type's path (the guest
    firewall, QEMU's forward, the lab's data network); each backup restores onto a container
    with the table identical."""
    for db in DATABASES:
        _psql(lab, db, PAIRS_SQL)
        CHECKSUMS[db] = _psql(lab, db, CHECKSUM_SQL)
    assert len(set(CHECKSUMS.values())) == len(DATABASES)  # three different tables

    def backup(db: str) -> dict[str, Any]:
        return dict(
            lab.json("db", "backup", "create", db, "--name", f"{db}-full", "--wait", timeout=900)
        )

    for db, made in zip(DATABASES, _parallel(backup, DATABASES), strict=True):
        assert (made["status"], made["database"], made["type"]) == ("COMPLETED", db, "full")
    _parallel(lambda db: _restore(lab, db, "container.small"), DATABASES)


# -- moves between compute types -------------------------------------------------------------
MOVES = {"pgc": "vm.small", "pgvm": "baremetal.small", "pgbm": "container.small"}


def _move(lab: Platform, db: str, flavor: str) -> None:
    """``db`` moved live to ``flavor`` while a client writes every 50 ms through its
    endpoint: every acknowledged write is there after, the data and the endpoint too."""
    before = lab.json("db", "show", db)
    endpoint = before["endpoint"]
    writer = Writer.running(_alice_dsn(endpoint), 0.0)
    started = time.monotonic()
    try:
        moved = lab.json("db", "move", db, "--flavor", flavor, "--wait", timeout=1500)
        took = time.monotonic() - started
        time.sleep(1.0)
    finally:
        writer.stop()
    case = f"{before['compute_type']} -> {moved['compute_type']}"
    record_timing("switch", f"move {case}", writer.gap())
    record_timing("move", case, took)
    assert (moved["id"], moved["endpoint"], moved["status"]) == (before["id"], endpoint, "ACTIVE")
    assert moved["flavor"] == flavor and moved["compute_type"] == flavor.split(".")[0]
    assert writer.missing() == [] and len(writer.acked) > 100  # RPO 0
    assert [
        (m["role"], m["compute_type"]) for m in moved["members"] if m["state"] != "DELETING"
    ] == [
        ("primary", moved["compute_type"])
    ]  # the former primary retired (its compute's delete may still run)
    assert _psql(lab, db, CHECKSUM_SQL) == CHECKSUMS[db]  # as alice: its users came along


def test_every_compute_type_moves_live_to_another(lab: Platform) -> None:
    """container -> VM, VM -> bare metal, bare metal -> container, at once; then the moved
    databases keep their backups and back up into the same repository."""
    deadline = time.monotonic() + 600  # the node the tour's bare-metal database does not hold
    while not any(n["state"] == "available" for n in _nodes(lab).values()):
        assert time.monotonic() < deadline, _nodes(lab)
        time.sleep(2)
    _parallel(lambda move: _move(lab, *move), MOVES.items())
    ON.update({flavor.split(".")[0]: db for db, flavor in MOVES.items()})
    moved = ON["container"]
    backups = {b["name"] for b in lab.json("db", "backup", "list", "--database", moved)}
    assert f"{moved}-full" in backups  # taken on bare metal, before the move
    made = lab.json("db", "backup", "create", moved, "--name", f"{moved}-moved", "--wait")
    assert made["status"] == "COMPLETED"


# -- self-healing ------------------------------------------------------------------------------
def _heal_and_check(lab: Platform, db: str, case: str, since: dt.datetime) -> None:
    """The platform repaired the compute (an operation that succeeded) and the database is
    HEALTHY again with its data; the time is until both were true."""
    start = time.monotonic()
    instance_id = _instance_of(lab, db)
    deadline = start + 900
    while True:
        ops = _repairs(lab, instance_id, since)
        if ops and ops[0]["status"] == "SUCCEEDED":
            break
        assert not ops or ops[0]["status"] != "FAILED", ops
        assert time.monotonic() < deadline, ops
        time.sleep(0.5)
    _healthy_again(lab, db, since)
    record_timing("healing", case, time.monotonic() - start)
    assert _psql(lab, db, "SELECT x FROM t") == "42"


def test_a_killed_container_comes_back(lab: Platform) -> None:
    (container,) = podman_containers(_instance_of(lab, ON["container"]))
    since = _now()
    subprocess.run(["podman", "kill", container["Id"]], check=True, capture_output=True)
    _heal_and_check(lab, ON["container"], "podman kill (container)", since)


def test_a_removed_container_is_recreated_on_its_data_volume(lab: Platform) -> None:
    instance_id = _instance_of(lab, ON["container"])
    (container,) = podman_containers(instance_id)
    since = _now()
    force_remove(container["Id"])
    _heal_and_check(lab, ON["container"], "podman rm -f (container)", since)
    (again,) = podman_containers(instance_id)
    assert again["Id"] != container["Id"]


def test_a_vm_whose_qemu_was_killed_comes_back(lab: Platform) -> None:
    domain = f"onep-{_instance_of(lab, ON['vm'])}"
    pids = subprocess.run(
        ["pgrep", "-f", f"guest={domain},"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(pids) == 1, pids
    since = _now()
    os.kill(int(pids[0]), 9)
    _heal_and_check(lab, ON["vm"], "QEMU killed (VM)", since)


def test_a_node_powered_off_through_its_bmc_comes_back(lab: Platform) -> None:
    (node,) = [n for n in _nodes(lab).values() if n["state"] == "active"]
    entry = next(n for n in json.loads(LAB.read_text())["nodes"] if n["name"] == node["name"])
    bmc = RedfishBmc(entry["bmc_url"], entry["username"], entry["password"], entry["system_id"])
    since = _now()
    bmc.set_power(PowerAction.FORCE_OFF)  # behind the platform's back: straight to the BMC
    _heal_and_check(lab, ON["baremetal"], "powered off at the BMC (bare metal)", since)


def test_the_platform_killed_with_minus_9_brings_everything_back(lab: Platform) -> None:
    lab.kill()
    since = _now()
    started = time.monotonic()
    lab.start()
    for compute_type, name in ON.items():
        _healthy_again(lab, name, since)
        seconds = time.monotonic() - started
        record_timing("healing", f"onep up after kill -9 ({compute_type})", seconds)
        assert _psql(lab, name, "SELECT x FROM t") == "42"


# -- failover on a VM and on bare metal ---------------------------------------------------------
def _members(lab: Platform, db: str) -> list[tuple[str, str, str, str]]:
    return [
        (m["name"], m["role"], m["state"], m["compute_type"])
        for m in lab.json("db", "replica", "list", db)
    ]


def _kill_qemu(lab: Platform, db: str) -> None:
    domain = f"onep-{_instance_of(lab, db)}"
    pids = subprocess.run(
        ["pgrep", "-f", f"guest={domain},"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(pids) == 1, pids
    os.kill(int(pids[0]), 9)


def _node_bmc(name: str) -> RedfishBmc:
    entry = next(n for n in json.loads(LAB.read_text())["nodes"] if n["name"] == name)
    return RedfishBmc(entry["bmc_url"], entry["username"], entry["password"], entry["system_id"])


def _fail_over(lab: Platform, db: str, break_it: Callable[[], object], case: str) -> str:
    """Break ``db``'s primary with ``break_it`` while a client writes through its endpoint;
    wait until another member is the primary. Returns the former primary's name."""
    before = lab.json("db", "show", db)
    endpoint, old = before["endpoint"], before["members"][0]["name"]
    writer = Writer.running(_alice_dsn(endpoint), 1.5)
    broken_at = time.monotonic()
    break_it()
    try:
        deadline = time.monotonic() + 300
        while True:
            shown = lab.json("db", "show", db)
            if shown["status"] == "ACTIVE" and shown["members"][0]["name"] != old:
                break
            assert time.monotonic() < deadline, shown
            time.sleep(0.5)
        switched_at = time.monotonic()
        wrote_after = writer.wait_for_writes(3, switched_at)
    finally:
        writer.stop()
    record_timing("switch", f"failover {case}", writer.gap())
    lost = set(writer.missing())  # at most what the replica had not received: the last instant
    assert all(broken_at - t < 1.0 for seq, t in writer.acked if seq in lost), sorted(lost)[:10]
    # the client wrote to the old primary and then to the new one (how many depends on how
    # fast an emulated guest commits on a loaded machine: 18 in all were seen)
    wrote_before = sum(1 for _, t in writer.acked if t < broken_at)
    assert wrote_before >= 3 and wrote_after >= 3, (wrote_before, wrote_after, writer.errors[-5:])
    assert (shown["id"], shown["endpoint"]) == (before["id"], endpoint)
    assert _psql(lab, db, CHECKSUM_SQL) == CHECKSUMS[db]
    return str(old)


def _whole_again(lab: Platform, db: str, old: str, compute_type: str) -> None:
    """The former primary discarded, a new replica on its flavor: the group's size again."""
    deadline = time.monotonic() + 900
    while True:
        members = _members(lab, db)
        if [m[1:3] for m in members] == [("primary", "ACTIVE"), ("replica", "ACTIVE")]:
            break
        assert not any(m[2] == "ERROR" for m in members), members
        assert time.monotonic() < deadline, members
        time.sleep(2)
    assert old not in [m[0] for m in members] and members[1][3] == compute_type, members


def test_a_vm_primary_and_a_bare_metal_primary_fail_over(lab: Platform) -> None:
    """Each gets a replica on a container; then, at once, the VM's QEMU is killed and the
    node is powered off through its BMC. Each is fenced through the compute API, its
    replica promoted behind the same endpoint, and a new replica made on its flavor."""
    vm_db, bm_db = ON["vm"], ON["baremetal"]
    _parallel(
        lambda db: lab.run(
            "db", "replica", "create", db, "--flavor", "container.small", "--wait", timeout=600
        ),
        (vm_db, bm_db),
    )  # fmt: skip
    (node,) = [n["name"] for n in _nodes(lab).values() if n["state"] == "active"]
    vm_domain = f"onep-{_instance_of(lab, vm_db)}"
    cases = [
        (vm_db, lambda: _kill_qemu(lab, vm_db), "vm (QEMU killed)", "vm"),
        (
            bm_db,
            lambda: _node_bmc(node).set_power(PowerAction.FORCE_OFF),
            "baremetal (powered off at the BMC)",
            "baremetal",
        ),
    ]
    olds = _parallel(lambda case: _fail_over(lab, *case[:3]), cases)
    # Whole again: the VM replica is the partition test's, the node's the clean test's.
    for (db, _, _, compute_type), old in zip(cases, olds, strict=True):
        _whole_again(lab, db, old, compute_type)
    state = subprocess.run(
        ["virsh", "-c", "qemu:///system", "domstate", vm_domain], capture_output=True, text=True
    )
    assert state.returncode != 0 or state.stdout.strip() == "shut off", state  # gone, or off
    for db in (vm_db, bm_db):  # what happened, step by step, in the platform's operations
        db_id = lab.json("db", "show", db)["id"]
        (op,) = [
            o for o in lab.json("operation", "list")
            if o["kind"] == "db.failover" and o["resource_id"] == db_id
        ]  # fmt: skip
        assert op["status"] == "SUCCEEDED"
        assert [s["name"] for s in op["steps"]][:3] == ["fence", "promote", "replace"], op


def test_a_frozen_vm_primary_is_fenced_and_never_writable_again(lab: Platform) -> None:
    """A partition: the VM primary suspended (``virsh suspend``) until the failover is done,
    then resumed: it was destroyed through the compute API, so nothing of it takes writes."""
    db = ON["vm"]
    (vm_replica,) = [m[0] for m in _members(lab, db) if m[1] == "replica" and m[3] == "vm"]
    switched = lab.json("db", "switchover", db, "--to", vm_replica, "--wait", timeout=300)
    assert switched["members"][0]["name"] == vm_replica
    former = switched["members"][0]["endpoint"]
    domain = f"onep-{_instance_of(lab, db)}"
    suspend = ["virsh", "-c", "qemu:///system", "suspend", domain]
    old = _fail_over(
        lab, db, lambda: subprocess.run(suspend, check=True, capture_output=True), "vm (suspended)"
    )
    resumed = subprocess.run(
        ["virsh", "-c", "qemu:///system", "resume", domain], capture_output=True, text=True
    )
    assert resumed.returncode != 0, resumed.stdout  # destroyed (fenced), not frozen
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run(
            ["psql", "-h", former["host"], "-p", str(former["port"]), "-U", "alice", "appdb",
             "-c", "INSERT INTO t VALUES (7)"],
            env={**os.environ, "PGPASSWORD": ALICE_PW, "PGCONNECT_TIMEOUT": "5"},
            capture_output=True, check=True, timeout=30,
        )  # fmt: skip
    assert _psql(lab, db, "SELECT pg_is_in_recovery()") == "f"
    # The group's size is restored as after any failover (shown above); here its new VM
    # replica goes as soon as it is asked for: the CPU is for what follows.
    deadline = time.monotonic() + 120
    while not (replicas := [m for m in _members(lab, db) if m[1] == "replica"]):
        assert time.monotonic() < deadline, _members(lab, db)
        time.sleep(1)
    assert old not in [m[0] for m in _members(lab, db)] and replicas[0][3] == "vm", replicas
    lab.run("db", "replica", "delete", replicas[0][0], "--wait", timeout=600)


# -- bare metal: delete, and a deploy killed mid-way -----------------------------------------------
def _disk_holds(node: str, needle: bytes) -> bool:
    """Whether the node's disk, as the node itself reads it, holds ``needle`` anywhere."""
    (entry,) = [n for n in json.loads(LAB.read_text())["nodes"] if n["name"] == node]
    path = subprocess.run(
        ["virsh", "-c", "qemu:///system", "vol-path", "--pool", "default", entry["disk_volume"]],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    raw = LAB.parent / f".{node}-scan.raw"
    try:  # -U: the node may be running; the raw copy is sparse where the disk is unwritten
        subprocess.run(
            ["qemu-img", "convert", "-U", "-O", "raw", path, str(raw)],
            capture_output=True, check=True, timeout=600,
        )  # fmt: skip
        return _file_contains(raw, needle)
    finally:
        raw.unlink(missing_ok=True)


def _file_contains(path: Path, needle: bytes, chunk: int = 64 << 20) -> bool:
    tail = b""
    with path.open("rb") as f:
        while block := f.read(chunk):
            if needle in tail + block:
                return True
            tail = block[-(len(needle) - 1) :]
    return False


def test_deleting_the_bare_metal_database_cleans_its_node(lab: Platform) -> None:
    """The tenant's rows are on the node's disk while it lives, and nowhere on it after."""
    gone = ON["baremetal"]
    marker = f"tenant-row-{os.urandom(8).hex()}"
    _psql(lab, gone, f"CREATE TABLE secret AS SELECT '{marker}'::text AS v")  # WAL: on disk
    (node,) = [n["name"] for n in _nodes(lab).values() if n["state"] == "active"]
    for _ in range(5):  # the node holds a replica since the failover: streamed, then flushed
        if _disk_holds(node, marker.encode()):
            break
        time.sleep(3)
    else:
        raise AssertionError(f"{marker} never reached the disk of {node}")
    out = lab.run("db", "delete", gone, "--wait", timeout=900)
    assert f"deleted {gone}" in out.stdout
    del ON["baremetal"]
    nodes = _wait_nodes(lab, "available", timeout=300)
    assert all(n["instance"] is None for n in nodes.values())
    assert not _disk_holds(node, marker.encode())


def _wait_op(lab: Platform, op_id: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while (op := lab.json("operation", "show", op_id))["status"] not in ("SUCCEEDED", "FAILED"):
        assert time.monotonic() < deadline, op
        time.sleep(3)
    assert op["status"] == "SUCCEEDED", op


@pytest.mark.timeout(1200)  # two restores onto a node and a VM, a kill, then two deletes
def test_restores_killed_mid_deploy_resume(lab: Platform) -> None:
    """The deleted bare-metal database's backup outlives it: it is restored onto bare metal,
    a second backup onto the other node and the third onto a VM, at once; the platform is
    killed with -9 once a node's ramdisk was booted but before the step was recorded.
    Restarted, every restore resumes where it was and ends ACTIVE with its table identical.
    With the restores onto containers above, every compute type is restored from and onto
    (the backups were taken on a container, a VM and a node: pgc, pgvm, pgbm)."""
    gone = next(db for db in DATABASES if db not in ON.values())  # deleted above
    first = next(db for db in DATABASES if db != gone)  # onto the other node, at once
    (last,) = [db for db in DATABASES if db not in (gone, first)]
    _wait_nodes(lab, "available")
    lab.stop()
    lab.start(ONEP_FAILPOINT="instance.create.baremetal:boot_ramdisk")
    started = time.monotonic()
    restores = {
        (gone, "baremetal.small"): f"{gone}-back",
        (first, "baremetal.small"): f"{first}-on-bm",
        (last, "vm.small"): f"{last}-on-vm",
    }
    assert {DATABASES[db] for db, _ in restores} == set(DATABASES.values())
    ops = {
        name: lab.json("db", "create", name, "--restore", f"{db}-full", "--flavor", flavor)["id"]
        for (db, flavor), name in restores.items()
    }
    deadline = time.monotonic() + 300
    while "FAILPOINT instance.create.baremetal:boot_ramdisk" not in lab.log():
        assert time.monotonic() < deadline, lab.log()[-2000:]
        time.sleep(1)
    lab.kill()
    lab.start()  # no failpoint: the deploy resumes at boot_ramdisk and goes on
    try:
        for (db, flavor), name in restores.items():
            _wait_op(lab, ops[name])
            compute_type = flavor.split(".")[0]
            record_timing(
                "restore", f"{DATABASES[db]} -> {compute_type} (platform killed mid-way)",
                time.monotonic() - started,
            )  # fmt: skip
            shown = lab.json("db", "show", name)
            assert shown["status"] == "ACTIVE" and shown["compute_type"] == compute_type
            assert _psql(lab, name, CHECKSUM_SQL) == CHECKSUMS[db]
        active = [n for n in _nodes(lab).values() if n["state"] == "active"]
        assert len(active) == 2
    finally:
        _parallel(
            lambda name: lab.run("db", "delete", name, "--wait", timeout=900, check=False),
            restores.values(),
        )
    _wait_nodes(lab, "available", timeout=300)


# -- MariaDB and Redis on bare metal ---------------------------------------------------------------
MARIA_PW, REDIS_PW = "Alice-bm-maria-3", "Carol-bm-redis-5"
ENGINES_ON_BM = {
    "mdb-bm": ("--datastore", "mariadb", "--version", "10.11", "--database", "appdb",
               "--user", f"alice:{MARIA_PW}"),
    "rdb-bm": ("--datastore", "redis", "--version", "7.0", "--user", f"carol:{REDIS_PW}"),
}  # fmt: skip


def _container_replica_takes_over(lab: Platform, db: dict[str, Any], user: str, pw: str) -> None:
    name, ep = db["name"], db["endpoint"]
    dsn = f"host={ep['host']} port={ep['port']} user={user} password={pw}"
    if db["datastore"] == "mariadb":
        writer: type[Writer] = MariaDbWriter
        dsn += " dbname=appdb"

        def has_write(member: dict[str, Any], seq: int) -> bool:
            sql = f"SELECT count(*) FROM onep_writes WHERE seq = {seq}"
            return mariadb(member, user, pw, sql, "appdb") == "1"
    else:
        writer = RedisWriter

        def has_write(member: dict[str, Any], seq: int) -> bool:
            return redis(member, user, pw, "SISMEMBER", "onep_writes", str(seq)) == "1"

    lab.run("db", "replica", "create", name, "--flavor", "container.small", "--wait",
            timeout=900)  # fmt: skip
    shown = under_writer(lab, name, writer, dsn, has_write, "switchover")
    by_role = {m["role"]: m["compute_type"] for m in shown["members"]}
    assert by_role == {"primary": "container", "replica": "baremetal"}, shown


def test_mariadb_and_redis_serve_from_bare_metal(lab: Platform) -> None:
    """A MariaDB and a Redis database on the two nodes at once (each engine's whole-disk
    image deployed through Redfish), each used with its own client through its endpoint as
    the tenant's user; deleted, both nodes are cleaned and available again. (Both engines on
    containers and VMs, their backups and users: test_engines.)"""
    _wait_nodes(lab, "available")
    started = time.monotonic()

    def create(name: str) -> dict[str, Any]:
        db = lab.json("db", "create", name, *ENGINES_ON_BM[name], "--flavor", "baremetal.small",
                      "--wait", timeout=1800)  # fmt: skip
        record_timing("create", f"{name}: db create on bare metal", time.monotonic() - started)
        return db

    try:
        mdb, rdb = _parallel(create, ENGINES_ON_BM)
        for db in (mdb, rdb):
            assert (db["status"], db["compute_type"], db["health"]) == (
                "ACTIVE", "baremetal", "HEALTHY",
            ), db  # fmt: skip
        serving = {n["instance"] for n in _nodes(lab).values() if n["state"] == "active"}
        assert len(serving) == 2, _nodes(lab)
        mariadb(mdb, "alice", MARIA_PW, "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)",
                "appdb")  # fmt: skip
        assert mariadb(mdb, "alice", MARIA_PW, "SELECT sum(x) FROM t", "appdb") == "3"
        with pytest.raises(AssertionError, match="denied"):
            mariadb(mdb, "alice", "not-her-password", "SELECT 1")
        assert redis(rdb, "carol", REDIS_PW, "SET", "cart:1", "3 apples") == "OK"
        assert redis(rdb, "carol", REDIS_PW, "GET", "cart:1") == "3 apples"
        with pytest.raises(AssertionError, match="NOPERM"):  # the server's own commands
            redis(rdb, "carol", REDIS_PW, "CONFIG", "GET", "maxmemory")
        # A container replica of each, then a switchover to it under a writer: every
        # acknowledged write kept, and the node, now a replica, follows the container
        # primary (the relays of both compute types through the hub).
        _parallel(
            lambda case: _container_replica_takes_over(lab, *case),
            [(mdb, "alice", MARIA_PW), (rdb, "carol", REDIS_PW)],
        )
    finally:
        _parallel(
            lambda name: lab.run("db", "delete", name, "--wait", timeout=900, check=False),
            ENGINES_ON_BM,
        )
    nodes = _wait_nodes(lab, "available", timeout=300)
    assert all(n["instance"] is None for n in nodes.values())


# -- warm capacity ---------------------------------------------------------------------------------
WARM = {"container": "container.small", "vm": "vm.small", "baremetal": "baremetal.small"}
APP_PW = "Warm-app-pass1"


def _warm(p: Platform) -> dict[str, dict[str, Any]]:
    return {w["compute_type"]: w for w in p.json("warm", "list")}


def _wait_warm(p: Platform, ready: dict[str, int], timeout: float = 900) -> None:
    """Until each compute type's pool has ``ready`` READY instances and none building."""
    deadline = time.monotonic() + timeout
    while True:
        pools = _warm(p)
        if all(pools[ct]["ready"] == n and pools[ct]["building"] == 0 for ct, n in ready.items()):
            return
        assert time.monotonic() < deadline, pools
        time.sleep(2)


def _app_psql(p: Platform, db: str, token: str, sql: str, password: str = APP_PW) -> str:
    out = p.run(
        "db", "connect", db, "--database", "appdb", "--user", "app", "--", "-tAc", sql,
        ONEP_TOKEN=token, PGPASSWORD=password,
    )  # fmt: skip
    return out.stdout.strip()


def _claim(p: Platform, token: str, name: str, flavor: str, drain: bool = False) -> float:
    """Create a database that takes the warm instance; the seconds until the app user's
    first query answered (the CLI's own start-up included). ``drain``: the flavor's pool is
    set to 0 as soon as the create is accepted (its instance is claimed by then), so that
    the keeper does not replace it."""
    start = time.monotonic()
    argv = ["db", "create", name, "--flavor", flavor, "--database", "appdb",
            "--user", f"app:{APP_PW}"]  # fmt: skip
    if not drain:
        p.run(*argv, "--wait", ONEP_TOKEN=token, timeout=600)
    else:
        op = p.json(*argv, ONEP_TOKEN=token)
        p.run("warm", "set", flavor, "--count", "0")
        deadline = time.monotonic() + 600
        while (shown := p.json("operation", "show", op["id"], ONEP_TOKEN=token))["status"] not in (
            "SUCCEEDED",
            "FAILED",
        ):
            assert time.monotonic() < deadline, shown
            time.sleep(0.2)
        assert shown["status"] == "SUCCEEDED", shown
    assert _app_psql(p, name, token, "SELECT 1") == "1"
    return time.monotonic() - start


def test_warm_instances_are_claimed_on_every_compute_type(lab: Platform) -> None:
    """One warm instance per compute type; project A's creates claim them, each with its
    own credentials. The keeper replaces the claimed container, which project B's create
    claims: it finds nothing of A's, and A's password opens nothing of B's. Draining deletes
    what is left. (The VM and bare-metal pools are drained once claimed: their replacement
    is the keeper's path of their first build, which would cost a boot under TCG and a
    deploy more.)"""
    _wait_nodes(lab, "available")
    tokens = {t: lab.json("project", "create", f"warm-{t}")["token"] for t in ("a", "b")}
    try:
        for flavor in WARM.values():
            lab.run("warm", "set", flavor, "--count", "1")
        _wait_warm(lab, dict.fromkeys(WARM, 1))
        marker = f"a-row-{os.urandom(6).hex()}"
        for ct, flavor in WARM.items():
            seconds = _claim(lab, tokens["a"], f"wa-{ct}", flavor, drain=ct != "container")
            record_timing("warm", f"{ct}: db create + the app's first query", seconds)
            _app_psql(lab, f"wa-{ct}", tokens["a"], f"CREATE TABLE a AS SELECT '{marker}' v")
        assert {ct: w["claimed"] for ct, w in _warm(lab).items()} == dict.fromkeys(WARM, 1)
        _wait_warm(lab, {"container": 1, "vm": 0, "baremetal": 0})  # the keeper made one
        _claim(lab, tokens["b"], "wb-container", WARM["container"])
        assert _warm(lab)["container"]["claimed"] == 2
        lab.run("warm", "set", WARM["container"], "--count", "0")
        a_creds = lab.json("db", "credentials", "wa-container", ONEP_TOKEN=tokens["a"])
        b_creds = lab.json("db", "credentials", "wb-container", ONEP_TOKEN=tokens["b"])
        assert a_creds["password"] != b_creds["password"]
        # B's database holds nothing of A's, and A's password opens nothing of B's
        tables = _app_psql(lab, "wb-container", tokens["b"], "SELECT count(*) FROM pg_tables "
                           "WHERE schemaname = 'public'")  # fmt: skip
        assert tables == "0"
        refused = lab.run(
            "db", "connect", "wb-container", "--user", "admin", "--", "-tAc", "SELECT 1",
            check=False, ONEP_TOKEN=tokens["b"], PGPASSWORD=a_creds["password"],
        )  # fmt: skip
        assert refused.returncode != 0 and "password authentication failed" in refused.stderr
        # and A cannot even see B's
        assert lab.run("db", "show", "wb-container", check=False, ONEP_TOKEN=tokens["a"]).returncode
        for ct in WARM:  # each of A's kept its data
            assert _app_psql(lab, f"wa-{ct}", tokens["a"], "SELECT v FROM a") == marker
        _wait_warm(lab, dict.fromkeys(WARM, 0))
    finally:
        for flavor in WARM.values():
            lab.run("warm", "set", flavor, "--count", "0", check=False)
        owned = [("a", f"wa-{ct}") for ct in WARM] + [("b", "wb-container")]
        _parallel(
            lambda pair: lab.run(
                "db",
                "delete",
                pair[1],
                "--wait",
                check=False,
                timeout=900,
                ONEP_TOKEN=tokens[pair[0]],
            ),
            owned,
        )
    _wait_warm(lab, dict.fromkeys(WARM, 0))
    _wait_nodes(lab, "available", timeout=600)
