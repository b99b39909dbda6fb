"""``python -m bench scheduler [--hosts N] [--creates N] [--processes N] [--threads N]``:
placement at scale on PostgreSQL.

It makes a fresh database in PostgreSQL (``--url``, default the test cluster of
``scripts/test-postgres.sh``, started if need be), migrates it, fills it with ``--hosts`` hosts
in ``--pools`` pools over the three compute types, each host with a zone and a rack, and
runs ``--creates`` placements at once from ``--processes`` processes of ``--threads`` threads,
all released together. A placement is what a create does to the store: one transaction
that runs the real :func:`oneplatform.compute.scheduler.select_host` (spreading each
project's instances over failure domains) and inserts the instance. Each is timed from its
transaction's start to its commit.

Afterwards it checks every host against its capacity (vCPUs and RAM with their allocation
ratios, disk, one instance per bare-metal node) and that every placement left exactly one
instance. Its last line: ``placement p50_ms=… p99_ms=… overcommit=0``. The baseline in the
same run is the least a placement can cost: the same transaction inserting the instance on
a host chosen by primary key, with no scheduling.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

import oneplatform.assembly  # noqa: F401  (the compute types the scheduler asks about)
from bench.common import write_results
from oneplatform.compute.scheduler import select_host
from oneplatform.errors import NoValidHost
from oneplatform.store.db import make_engine, upgrade
from oneplatform.store.models import Flavor, Host, Image, Instance, Pool, Project

NAME = "scheduler"
REPO = Path(__file__).resolve().parent.parent
COMPUTE_TYPES = ("container", "vm", "baremetal")
ZONES = 5
RACKS_PER_ZONE = 10
PROJECTS = 50
# (name, compute type, vCPUs, RAM MB, disk GB): what the placements ask for, in turn.
FLAVORS = (
    ("bench.container.small", "container", 1, 512, 2),
    ("bench.container.large", "container", 4, 4096, 20),
    ("bench.vm.small", "vm", 1, 1024, 5),
    ("bench.vm.medium", "vm", 2, 2048, 10),
    ("bench.baremetal", "baremetal", 1, 1024, 4),
)


@dataclass(frozen=True)
class Plan:
    url: str
    creates: int
    processes: int
    threads: int


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench scheduler",
        description="Placement latency and overcommit with many hosts, on PostgreSQL.",
    )
    parser.add_argument("--hosts", type=int, default=10_000, help="hosts (default 10000)")
    parser.add_argument("--pools", type=int, default=100, help="pools (default 100)")
    parser.add_argument("--creates", type=int, default=1000, help="placements (default 1000)")
    parser.add_argument("--processes", type=int, default=4, help="processes (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="threads each (default 1)")
    parser.add_argument(
        "--url",
        default=None,
        help="a PostgreSQL server URL (postgresql+psycopg://...); default: the test cluster",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of the host layout")
    args = parser.parse_args(argv)
    for name in ("hosts", "pools", "creates", "processes", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.pools < len(COMPUTE_TYPES) or args.hosts < args.pools:
        parser.error(f"--pools must be at least {len(COMPUTE_TYPES)} and at most --hosts")
    return args


def test_cluster_url() -> str:
    script = REPO / "scripts" / "test-postgres.sh"
    subprocess.run([str(script), "start"], check=True, stdout=subprocess.DEVNULL)
    return subprocess.run(
        [str(script), "url"], check=True, capture_output=True, text=True
    ).stdout.strip()


def fresh_database(server_url: str) -> str:
    """A new, migrated database on the server; its URL."""
    name = f"onep_bench_sched_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def drop_database(server_url: str, url: str) -> None:
    name = make_url(url).database
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def fill(url: str, hosts: int, pools: int, seed: int) -> dict[str, int]:
    """Pools over the three compute types, hosts with zones and racks, flavors, projects."""
    rng = random.Random(seed)
    engine = make_engine(url)
    counts = dict.fromkeys(COMPUTE_TYPES, 0)
    with Session(engine) as session, session.begin():
        pool_rows = [
            {"id": uuid.uuid4().hex, "name": f"bench-pool-{i}", "compute_type": ct, "settings": {}}
            for i in range(pools)
            for ct in (COMPUTE_TYPES[i % len(COMPUTE_TYPES)],)
        ]
        session.execute(insert(Pool), pool_rows)
        host_rows = []
        for i in range(hosts):
            pool = pool_rows[i % pools]
            ct = str(pool["compute_type"])
            counts[ct] += 1
            zone = i % pools % ZONES  # a pool's hosts share a zone, over several racks
            whole = ct == "baremetal"
            host_rows.append(
                {
                    "id": uuid.uuid4().hex,
                    "name": f"bench-host-{i}",
                    "pool_id": pool["id"],
                    "compute_type": ct,
                    "uri": f"test://bench-host-{i}",
                    "machine": f"bench-host-{i}",
                    "vcpus": rng.choice((8, 16) if whole else (16, 32, 64)),
                    "ram_mb": rng.choice((16384, 32768) if whole else (65536, 131072, 262144)),
                    "disk_gb": rng.choice((480, 960) if whole else (1000, 2000)),
                    "cpu_allocation_ratio": 1.0 if whole else 4.0,
                    "ram_allocation_ratio": 1.0,
                    "zone": f"z{zone}",
                    "rack": f"z{zone}-r{i // pools % RACKS_PER_ZONE}",
                    "traits": [],
                }
            )
        session.execute(insert(Host), host_rows)
        session.execute(
            insert(Flavor),
            [
                {"name": n, "compute_type": ct, "vcpus": v, "ram_mb": r, "disk_gb": d, "traits": []}
                for n, ct, v, r, d in FLAVORS
            ],
        )
        session.execute(insert(Project), [{"name": f"bench-project-{i}"} for i in range(PROJECTS)])
        session.add(Image(name="bench-image", content_hash="0" * 64, status="READY"))
    engine.dispose()
    return counts


def _placements(
    url: str, share: list[int], threads: int, baseline: bool, start: Any, out: Any
) -> None:
    """One process: ``threads`` threads place the creates numbered in ``share``."""
    import threading

    engine = make_engine(url)
    with Session(engine) as session:
        flavors: dict[str, Flavor] = {f.name: f for f in session.scalars(select(Flavor))}
        projects: list[str] = list(session.scalars(select(Project.id).order_by(Project.name)))
        image_id = session.scalar(select(Image.id))
        host_ids: list[str] = list(session.scalars(select(Host.id).order_by(Host.id)))
        session.expunge_all()
    results: list[tuple[float, str]] = []
    lock = threading.Lock()

    def place(n: int) -> tuple[float, str]:
        name, *_ = FLAVORS[n % len(FLAVORS)]
        flavor = flavors[name]
        project = projects[n % len(projects)]
        began = time.perf_counter()
        with Session(engine, expire_on_commit=False) as session, session.begin():
            flavor = session.merge(flavor, load=False)
            try:
                if baseline:
                    host = session.get_one(Host, host_ids[n * 7919 % len(host_ids)])
                else:
                    host = select_host(session, flavor, spread_project=project)
            except NoValidHost:
                return time.perf_counter() - began, "refused"
            session.add(
                Instance(
                    project_id=project,
                    name=f"bench-{n}",
                    flavor_id=flavor.id,
                    image_id=image_id,
                    host_id=host.id,
                    compute_type=flavor.compute_type,
                    status="BUILD",
                    vcpus=flavor.vcpus,
                    ram_mb=flavor.ram_mb,
                    disk_gb=flavor.disk_gb,
                )
            )
        return time.perf_counter() - began, "placed"

    def worker(mine: list[int]) -> None:
        start.wait()
        for n in mine:
            try:
                result = place(n)
            except Exception as exc:  # reported by the parent, which then fails the run
                result = (0.0, f"error: {type(exc).__name__}: {exc}")
            with lock:
                results.append(result)

    pool = [threading.Thread(target=worker, args=(share[t::threads],)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    engine.dispose()
    out.put(results)


def run_placements(plan: Plan, baseline: bool) -> tuple[list[float], int, float]:
    """(latencies in seconds, refusals, wall seconds) of ``plan.creates`` placements."""
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    out = ctx.Queue()
    numbers = list(range(plan.creates))
    procs = [
        ctx.Process(
            target=_placements,
            args=(plan.url, numbers[p :: plan.processes], plan.threads, baseline, start, out),
        )
        for p in range(plan.processes)
    ]
    for proc in procs:
        proc.start()
    time.sleep(3.0)  # let every process import and connect before the start
    began = time.perf_counter()
    start.set()
    results: list[tuple[float, str]] = []
    for _ in procs:
        results.extend(out.get(timeout=900))
    wall = time.perf_counter() - began
    for proc in procs:
        proc.join(60)
        if proc.exitcode != 0:
            raise SystemExit(f"bench scheduler: a placement process exited with {proc.exitcode}")
    errors = [outcome for _s, outcome in results if outcome.startswith("error")]
    if errors:
        raise SystemExit(f"bench scheduler: {len(errors)} placement(s) failed: {errors[0]}")
    latencies = [seconds for seconds, outcome in results if outcome == "placed"]
    return latencies, sum(1 for _s, o in results if o == "refused"), wall


def overcommitted(url: str) -> tuple[int, int]:
    """(hosts over any capacity, live instances)."""
    engine = make_engine(url)
    used = (
        select(
            Instance.host_id,
            func.sum(Instance.vcpus).label("v"),
            func.sum(Instance.ram_mb).label("r"),
            func.sum(Instance.disk_gb).label("d"),
            func.count(Instance.id).label("n"),
        )
        .where(Instance.deleted_at.is_(None))
        .group_by(Instance.host_id)
        .subquery()
    )
    query = (
        select(func.count())
        .select_from(Host)
        .join(used, used.c.host_id == Host.id)
        .join(Pool, Pool.id == Host.pool_id)
        .where(
            (used.c.v > Host.vcpus * Host.cpu_allocation_ratio)
            | (used.c.r > Host.ram_mb * Host.ram_allocation_ratio)
            | (used.c.d > Host.disk_gb)
            | ((Pool.compute_type == "baremetal") & (used.c.n > 1))
        )
    )
    with Session(engine) as session:
        over = int(session.scalar(query) or 0)
        live = int(session.scalar(select(func.count(Instance.id))) or 0)
        session.execute(text("DELETE FROM instances"))
        session.execute(text("UPDATE hosts SET generation = 0"))
        session.commit()
    engine.dispose()
    return over, live


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(latencies: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in latencies]
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "p90_ms": round(percentile(ms, 0.90), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    server = args.url or test_cluster_url()
    print(f"scheduler: a fresh database on {make_url(server).render_as_string()}", flush=True)
    url = fresh_database(server)
    try:
        began = time.perf_counter()
        counts = fill(url, args.hosts, args.pools, args.seed)
        print(
            f"scheduler: {args.hosts} hosts in {args.pools} pools "
            f"({', '.join(f'{n} {ct}' for ct, n in counts.items())}), {ZONES} zones x "
            f"{RACKS_PER_ZONE} racks, filled in {time.perf_counter() - began:.1f} s",
            flush=True,
        )
        plan = Plan(url, args.creates, args.processes, args.threads)
        results: dict[str, Any] = {
            "hosts": args.hosts,
            "pools": args.pools,
            "creates": args.creates,
            "processes": args.processes,
            "threads": args.threads,
            "load_before": os.getloadavg(),
        }
        for label, baseline in (("baseline", True), ("placement", False)):
            latencies, refused, wall = run_placements(plan, baseline)
            over, live = overcommitted(url)  # the baseline places blindly: not a check
            if live != len(latencies):
                raise SystemExit(
                    f"bench scheduler: {len(latencies)} placements but {live} instances"
                )
            stats = summary(latencies) if latencies else {}
            results[label] = {
                **stats,
                "placed": len(latencies),
                "refused": refused,
                "overcommit": over,
                "per_s": round(len(latencies) / wall, 1),
            }
            print(
                f"{label}: {len(latencies)} placed, {refused} refused in {wall:.2f} s "
                f"({len(latencies) / wall:.0f}/s), "
                + " ".join(f"{k}={v}" for k, v in stats.items()),
                flush=True,
            )
        results["load_after"] = os.getloadavg()
        ratio = results["placement"]["p50_ms"] / max(results["baseline"]["p50_ms"], 1e-9)
        results["p50_ratio_to_baseline"] = round(ratio, 2)
        print(f"wrote {write_results(NAME, results)}")
        placed = results["placement"]
        print(
            f"p50 {ratio:.2f}x the baseline transaction; load {os.getloadavg()[0]:.2f}",
        )
        print(
            f"placement p50_ms={placed.get('p50_ms')} p99_ms={placed.get('p99_ms')} "
            f"overcommit={placed['overcommit']}"
        )
        return 0 if placed["overcommit"] == 0 else 1
    finally:
        drop_database(server, url)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
