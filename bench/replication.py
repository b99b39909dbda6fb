"""Write gaps of switchovers, moves and failovers, against the same done by hand on host
PostgreSQL clusters, in one run. ``python -m bench replication [--rounds N]``.

A client writes a sequence number every 50 ms through the database's stable endpoint,
reconnecting on error (:class:`tests.e2e.writer.Writer`); the figure is the **write gap**, the
longest time without an acknowledged write around the event. Every acknowledged write must
be there afterwards for a switchover or a move (the sample is refused otherwise); a failover
reports what it lost.

(a) platform, on a database with one replica:
    - switchover: container primary, container replica, ``db switchover`` back and forth;
    - move, for each ordered pair of compute types: one database goes around
      container -> VM -> bare metal -> container -> bare metal -> VM -> container
      (``db move --flavor``), each round;
    - failover, per compute type: the primary on that type, a container replica; the
      primary broken behind the platform's back (``podman kill``; QEMU killed with -9; the
      node powered off at its BMC), then (untimed) switched back to its type once the
      group is whole again.
(b) by hand, on the host: a PostgreSQL 15 primary and a streaming standby (two clusters on
    127.0.0.1); the writer's connection string names both (libpq's
    ``target_session_attrs=read-write`` finds the writable one). Switchover: ``pg_ctl stop
    -m fast`` of the primary, ``pg_ctl promote -w`` of the standby. Failover: the primary
    killed with SIGKILL and the standby promoted at once (no detection, no fencing). The
    standby is rebuilt between rounds (untimed).

``BENCH_REPLICATION=move`` (comma-separated, of switchover, failover, move) measures only
those (default: all three).

Goals (issue 13): at most 2 s for a switchover, 5 s for a move, 10 s for a failover
(medians). VMs and the lab's nodes run under TCG here: their stops and promotions are slow.
It enrolls the bare-metal lab (an ``onep up`` of its own, as :mod:`bench.baremetal`).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from tests.e2e.writer import Writer

from bench.baremetal import NODES_TIMEOUT_S, wait_nodes
from bench.common import BenchError, PlatformProcess, free_port, now, podman
from oneplatform.baremetal.bmc import PowerAction
from oneplatform.baremetal.redfish import RedfishBmc
from oneplatform.sdk.client import Client

NAME = "replication"
ROUNDS = 3
TIMEOUT_S = 1800.0
GOALS = {"switchover": 2.0, "move": 5.0, "failover": 10.0}
PASSWORD = "Bench-repl-7f3a"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
LAB = Path("/var/lib/oneplatform/bmlab/nodes.json")
CYCLE = ["container", "vm", "baremetal", "container", "baremetal", "vm", "container"]
FLAVORS = {"container": "container.small", "vm": "vm.small", "baremetal": "baremetal.small"}
SETTLE_S = 1.5  # writes before and after the event


def platform_env() -> dict[str, str]:
    from bench.baremetal import platform_env as lab_env

    return lab_env()


# -- the platform -------------------------------------------------------------------------------
def _wait_op(client: Client, op_id: str, timeout: float) -> None:
    deadline = now() + timeout
    while (op := client.operations.get(op_id)).status not in ("SUCCEEDED", "FAILED"):
        if now() > deadline:
            raise BenchError(f"operation {op_id} ({op.kind}) did not end in {timeout:g}s")
        time.sleep(0.5)
    if op.status != "SUCCEEDED":
        raise BenchError(f"{op.kind} failed: {op.error_message}")


def _writer(client: Client, name: str) -> Writer:
    endpoint = client.db.get(name).endpoint
    assert endpoint is not None
    writer = Writer(
        f"host={endpoint.host} port={endpoint.port} user=app password={PASSWORD} "
        "dbname=appdb connect_timeout=5"
    )
    writer.prepare()
    writer.start()
    time.sleep(SETTLE_S)
    return writer


def _measured(
    client: Client, name: str, event: Callable[[], None], lossless: bool
) -> dict[str, Any]:
    writer = _writer(client, name)
    started = now()
    try:
        event()
        took = now() - started
        time.sleep(SETTLE_S)
    finally:
        writer.stop()
    missing = writer.missing()
    if lossless and missing:
        raise BenchError(f"{len(missing)} acknowledged write(s) missing: {missing[:10]}")
    return {"gap_s": writer.gap(), "took_s": took, "lost_writes": len(missing)}


def _group(client: Client, name: str, flavor: str, replica_flavor: str, timeout: float) -> None:
    accepted = client.db.create(
        name,
        flavor=flavor,
        databases=["appdb"],
        users=[{"name": "app", "password": PASSWORD, "databases": ["appdb"]}],
        replicas=1,
        replica_flavor=replica_flavor,
    )
    _wait_op(client, accepted.operation.id, timeout)


def _delete(client: Client, name: str, timeout: float) -> None:
    with suppress(Exception):
        _wait_op(client, client.db.delete(name).operation.id, timeout)


def _primary_type(client: Client, name: str) -> str:
    return client.db.get(name).compute_type


def measure_switchovers(client: Client, rounds: int, timeout: float) -> list[dict[str, Any]]:
    name = "bench-sw"
    _group(client, name, "container.small", "container.small", timeout)
    try:
        samples = []
        for rnd in range(1, rounds + 1):
            sample = _measured(
                client,
                name,
                lambda: _wait_op(client, client.db.switchover(name).operation.id, timeout),
                lossless=True,
            )
            print(f"  round {rnd} switchover gap {sample['gap_s']:.2f}s", flush=True)
            samples.append(sample)
        return samples
    finally:
        _delete(client, name, timeout)


def measure_moves(client: Client, rounds: int, timeout: float) -> dict[str, list[dict[str, Any]]]:
    name = "bench-mv"
    accepted = client.db.create(
        name,
        flavor=FLAVORS[CYCLE[0]],
        databases=["appdb"],
        users=[{"name": "app", "password": PASSWORD, "databases": ["appdb"]}],
    )
    _wait_op(client, accepted.operation.id, timeout)
    pairs: dict[str, list[dict[str, Any]]] = {}
    try:
        for rnd in range(1, rounds + 1):
            for source, target in itertools.pairwise(CYCLE):
                if target == "baremetal":
                    wait_nodes(client, NODES_TIMEOUT_S)

                def move(flavor: str = FLAVORS[target]) -> None:
                    _wait_op(client, client.db.move(name, flavor).operation.id, timeout)

                sample = _measured(client, name, move, lossless=True)
                if _primary_type(client, name) != target:
                    raise BenchError(f"{name} is not on {target} after its move")
                key = f"{source} -> {target}"
                print(
                    f"  round {rnd} move {key}: gap {sample['gap_s']:.2f}s "
                    f"(move {sample['took_s']:.0f}s)",
                    flush=True,
                )
                pairs.setdefault(key, []).append(sample)
        return pairs
    finally:
        _delete(client, name, timeout)


def _instance_of(platform: PlatformProcess, name: str) -> str:
    with sqlite3.connect(platform.home / "oneplatform.db") as conn:
        (instance_id,) = conn.execute(
            "SELECT instance_id FROM db_instances WHERE name = ? AND deleted_at IS NULL", (name,)
        ).fetchone()
    return str(instance_id)


def _break(platform: PlatformProcess, compute_type: str, instance_id: str) -> None:
    if compute_type == "container":
        podman(["kill", f"onep-{instance_id}"])
    elif compute_type == "vm":
        pids = subprocess.run(
            ["pgrep", "-f", f"guest=onep-{instance_id},"], capture_output=True, text=True
        ).stdout.split()
        if len(pids) != 1:
            raise BenchError(f"no single QEMU for {instance_id}: {pids}")
        os.kill(int(pids[0]), signal.SIGKILL)
    else:
        with sqlite3.connect(platform.home / "oneplatform.db") as conn:
            (name,) = conn.execute(
                "SELECT name FROM instances WHERE id = ?", (instance_id,)
            ).fetchone()
        node = next(n for n in platform.client.nodes.list() if n.instance == name)
        entry = next(e for e in json.loads(LAB.read_text())["nodes"] if e["name"] == node.name)
        bmc = RedfishBmc(entry["bmc_url"], entry["username"], entry["password"], entry["system_id"])
        bmc.set_power(PowerAction.FORCE_OFF)


def _whole(client: Client, name: str, timeout: float) -> None:
    """Until the database is ACTIVE with a primary and a ready replica."""
    deadline = now() + timeout
    while True:
        db = client.db.get(name)
        states = [(m.role, m.state) for m in db.members]
        if db.status == "ACTIVE" and states == [("primary", "ACTIVE"), ("replica", "ACTIVE")]:
            return
        if now() > deadline:
            raise BenchError(f"{name} is not whole again after {timeout:g}s: {db.status} {states}")
        time.sleep(1)


def measure_failovers(
    platform: PlatformProcess, rounds: int, timeout: float
) -> dict[str, list[dict[str, Any]]]:
    client = platform.client
    results: dict[str, list[dict[str, Any]]] = {}
    for compute_type, flavor in FLAVORS.items():
        name = f"bench-fo-{compute_type[:2]}"
        if compute_type == "baremetal":
            wait_nodes(client, NODES_TIMEOUT_S)
        _group(client, name, flavor, "container.small", timeout)
        try:
            for rnd in range(1, rounds + 1):
                if _primary_type(client, name) != compute_type:  # back to its type, untimed
                    _whole(client, name, timeout)
                    other = next(m.name for m in client.db.get(name).members if m.role == "replica")
                    _wait_op(client, client.db.switchover(name, to=other).operation.id, timeout)
                _whole(client, name, timeout)
                instance_id = _instance_of(platform, name)
                primary = client.db.get(name).members[0].name

                def failover(
                    iid: str = instance_id,
                    old: str = primary,
                    ct: str = compute_type,
                    db_name: str = name,
                ) -> None:
                    _break(platform, ct, iid)
                    deadline = now() + timeout
                    while True:
                        db = client.db.get(db_name)
                        if db.status == "ACTIVE" and db.members[0].name != old:
                            return
                        if now() > deadline:
                            raise BenchError(f"{db_name} did not fail over: {db.status}")
                        time.sleep(0.2)

                sample = _measured(client, name, failover, lossless=False)
                print(
                    f"  round {rnd} failover {compute_type}: gap {sample['gap_s']:.2f}s, "
                    f"{sample['lost_writes']} write(s) lost",
                    flush=True,
                )
                results.setdefault(compute_type, []).append(sample)
        finally:
            _delete(client, name, timeout)
    return results


# -- (b) by hand ----------------------------------------------------------------------------------
def _as_postgres(*argv: str, timeout: float = 600, check: bool = True) -> str:
    proc = subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise BenchError(f"{Path(argv[0]).name} failed: {(proc.stderr or proc.stdout)[-500:]}")
    return proc.stdout


def measure_by_hand(rounds: int) -> dict[str, list[dict[str, Any]]]:
    root = Path(tempfile.mkdtemp(prefix="onep-bench-repl-"))
    shutil.chown(root, "postgres", "postgres")
    ports = [free_port(), free_port()]
    results: dict[str, list[dict[str, Any]]] = {"switchover": [], "failover": []}
    try:
        _as_postgres(str(PG_BIN / "initdb"), "-D", str(root / "a"), "-U", "postgres",
                     "--auth=trust")  # fmt: skip
        with (root / "a" / "postgresql.auto.conf").open("a") as f:
            f.write(f"port = {ports[0]}\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{root}'\nwal_log_hints = on\n")  # fmt: skip
        _pg_ctl(root, "a", "start")
        _as_postgres(str(PG_BIN / "psql"), "-h", str(root), "-p", str(ports[0]),
                     "-c", f"CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'",
                     "-c", "CREATE DATABASE appdb OWNER app", "postgres")  # fmt: skip
        primary, standby = "a", "b"
        for kind in ("switchover", "failover"):
            for rnd in range(1, rounds + 1):
                _standby(root, primary, standby, ports)
                dsn = (
                    f"host=127.0.0.1,127.0.0.1 port={ports[0]},{ports[1]} user=app "
                    f"password={PASSWORD} dbname=appdb connect_timeout=2 "
                    "target_session_attrs=read-write"
                )
                writer = Writer(dsn)
                writer.prepare()
                writer.start()
                time.sleep(SETTLE_S)
                try:
                    if kind == "switchover":
                        _pg_ctl(root, primary, "stop", "-m", "fast")
                    else:
                        pid = int((root / primary / "postmaster.pid").read_text().split()[0])
                        _kill_server(pid)
                    _pg_ctl(root, standby, "promote")
                    time.sleep(SETTLE_S)
                finally:
                    writer.stop()
                missing = writer.missing()
                results[kind].append(
                    {"gap_s": writer.gap(), "lost_writes": len(missing), "took_s": 0.0}
                )
                print(f"  round {rnd} by hand {kind} gap {writer.gap():.2f}s", flush=True)
                with suppress(BenchError):
                    _pg_ctl(root, primary, "stop", "-m", "immediate")
                primary, standby = standby, primary
        return results
    finally:
        for name in ("a", "b"):
            with suppress(Exception):
                _pg_ctl(root, name, "stop", "-m", "immediate")
        shutil.rmtree(root, ignore_errors=True)


def _kill_server(pid: int) -> None:
    """The whole server dies at once, as its container or VM does: the postmaster and every
    child. (The postmaster alone leaves its backends serving until they notice, seconds
    later: a client's INSERT then hangs on an orphan instead of failing over.)"""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
    for victim in (pid, *children):
        with suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def _pg_ctl(root: Path, name: str, action: str, *more: str) -> None:
    _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(root / name), "-w", "-t", "120",
                 "-l", str(root / f"{name}.log"), *more, action)  # fmt: skip


def _standby(root: Path, primary: str, standby: str, ports: list[int]) -> None:
    """``standby`` made afresh from ``primary`` (pg_basebackup), streaming, started."""
    port = ports[0] if primary == "a" else ports[1]
    other = ports[1] if primary == "a" else ports[0]
    shutil.rmtree(root / standby, ignore_errors=True)
    _as_postgres(str(PG_BIN / "pg_basebackup"), "-D", str(root / standby), "-h", str(root),
                 "-p", str(port), "-U", "postgres", "-X", "stream", "-c", "fast", "-R")  # fmt: skip
    with (root / standby / "postgresql.auto.conf").open("a") as f:
        f.write(f"port = {other}\n")
    _pg_ctl(root, standby, "start")


# -- the benchmark --------------------------------------------------------------------------------
def _median(samples: list[dict[str, Any]]) -> float:
    return statistics.median(s["gap_s"] for s in samples)


def parts() -> list[str]:
    """What to measure: ``BENCH_REPLICATION`` (comma-separated, of switchover, failover,
    move), all three by default."""
    chosen = [p.strip() for p in os.environ.get("BENCH_REPLICATION", "").split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(GOALS))
    if unknown:
        raise BenchError(f"BENCH_REPLICATION: unknown part(s) {unknown}; known: {list(GOALS)}")
    return chosen or list(GOALS)


def run(platform: PlatformProcess, rounds: int, timeout: float) -> dict[str, Any]:
    client = platform.client
    wanted = parts()
    print(f"{NAME}: write gaps ({', '.join(wanted)}), {rounds} round(s)", flush=True)
    hand = measure_by_hand(rounds)
    results: dict[str, Any] = {"rounds": rounds, "by_hand": hand, "goals_s": GOALS}
    if "switchover" in wanted:
        results["switchover"] = measure_switchovers(client, rounds, timeout)
    if "failover" in wanted:
        results["failover"] = measure_failovers(platform, rounds, timeout)
    if "move" in wanted:
        results["move"] = measure_moves(client, rounds, timeout)
    raw_sw, raw_fo = _median(hand["switchover"]), _median(hand["failover"])
    print(f"{NAME} summary: write gap medians (seconds), ratio to by hand", flush=True)
    lines = []
    if "switchover" in results:
        lines.append(("switchover container", _median(results["switchover"]), raw_sw, "switchover"))
    lines += [
        (f"failover {t}", _median(s), raw_fo, "failover")
        for t, s in results.get("failover", {}).items()
    ]
    lines += [(f"move {p}", _median(s), raw_sw, "move") for p, s in results.get("move", {}).items()]
    summary = {}
    for label, gap, raw, kind in lines:
        goal = GOALS[kind]
        verdict = "meets" if gap <= goal else "misses"
        print(
            f"  {label:<32} {gap:6.2f}  by hand {raw:5.2f}  ratio {gap / raw:5.1f}  "
            f"goal {goal:g} s: {verdict}",
            flush=True,
        )
        summary[label] = {"median_gap_s": gap, "by_hand_s": raw, "ratio": gap / raw}
    results["summary"] = summary
    return results
