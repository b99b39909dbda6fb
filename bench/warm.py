"""Warm creates: a database that claims a warm instance, on each compute type, against the
raw baseline of that compute type measured in the same run. ``python -m bench warm``.

For each of ``container.small``, ``vm.small`` and ``baremetal.small`` (those the platform
has): ``onep warm set FLAVOR --count 1``; then, each round, wait (untimed) until one is
READY and time

(a) warm: ``client.db.create(...)`` with one database ``appdb`` and one user ``app``
    granted it -> ``app`` logs in to ``appdb`` with psycopg on 127.0.0.1 and ``SELECT 1``
    succeeds (tried every 20 ms), as :mod:`bench.db` times a cold create. The sample is
    refused unless the create claimed a warm instance (the pool's ``claimed`` went up).
    Deleted after (untimed; the keeper makes the next warm one meanwhile).
(b) raw, the same baseline as that compute type's cold benchmark: ``podman run`` + initdb
    until ``pg_isready`` (:func:`bench.db.measure_podman`); the same disk booted in plain
    QEMU until the admin logs in (:func:`bench.vm.measure_qemu`); the same deploy ISO
    writing the whole image with ``dd`` and the disk booted until the admin logs in
    (:func:`bench.bmraw.raw_round`).

Then the pool is drained (``--count 0``). The goals (issue 11): a third of the raw time and
at most 0.5 s on containers, at most 2 s on VMs and bare metal. It enrolls the bare-metal
lab (an ``onep up`` of its own, as :mod:`bench.baremetal`).
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench import bmraw
from bench import db as dbbench
from bench import vm as vmbench
from bench.baremetal import NODES_TIMEOUT_S, wait_nodes
from bench.common import (
    BenchError,
    PlatformProcess,
    Sample,
    now,
    podman_remove_labelled,
    raw_spec,
    show,
    step_durations,
    summarise,
)
from oneplatform.config import Settings
from oneplatform.schemas.warm import WarmSet
from oneplatform.sdk.client import Client

NAME = "warm-create"
FLAVORS = {"container": "container.small", "vm": "vm.small", "baremetal": "baremetal.small"}
GOALS = {"container": 0.5, "vm": 2.0, "baremetal": 2.0}  # seconds, median
CONTAINER_RAW_SHARE = 1 / 3  # and on containers, at most this share of the raw time
ROUNDS = 3
TIMEOUT_S = 900.0  # per sample, waiting for a READY one included
POLL_S = 1.0  # while waiting for a READY one


def _pool(client: Client, flavor: str) -> dict[str, Any]:
    for pool in client.warm.list():
        if pool.flavor == flavor:
            return pool.model_dump()
    raise BenchError(f"no warm pool for {flavor}")


def wait_ready(client: Client, flavor: str, timeout: float) -> None:
    deadline = now() + timeout
    while (pool := _pool(client, flavor))["ready"] < 1:
        if now() > deadline:
            raise BenchError(f"no warm {flavor} READY after {timeout:g}s: {pool}")
        time.sleep(POLL_S)


def drained(client: Client, flavor: str, timeout: float) -> None:
    """Wait until the pool's warm instances are deleted (their deletes are operations of
    the platform's: left running, `onep up`'s exit would leave them behind)."""
    deadline = now() + timeout
    while True:
        pool = _pool(client, flavor)
        busy = [
            op
            for op in client.operations.list()
            if op.kind.startswith("instance.delete") and op.status not in ("SUCCEEDED", "FAILED")
        ]
        if pool["ready"] == pool["building"] == 0 and not busy:
            return
        if now() > deadline:
            print(f"  warning: warm {flavor} not drained in {timeout:g}s: {pool}", flush=True)
            return
        time.sleep(POLL_S)


def measure_warm(client: Client, flavor: str, name: str, rnd: int, timeout: float) -> Sample:
    claimed = _pool(client, flavor)["claimed"]
    password = secrets.token_urlsafe(18)
    users = [{"name": dbbench.USER, "password": password, "databases": [dbbench.DATABASE]}]
    t0 = now()
    accepted = client.db.create(name, flavor=flavor, databases=[dbbench.DATABASE], users=users)
    t_accepted = now()
    try:
        endpoint = accepted.instance.endpoint
        if endpoint is None:
            raise BenchError(f"{name}: a claimed instance has its endpoint at once; none came")
        t_login, first_seen = dbbench.wait_login(endpoint.port, password, t0 + timeout)
        # -- not timed from here on
        op = dbbench.wait_operation(client, accepted.operation.id, now() + timeout)
        if op.status != "SUCCEEDED":
            raise BenchError(f"create of {name} {op.status}: {op.error_code} {op.error_message}")
        if _pool(client, flavor)["claimed"] != claimed + 1:
            raise BenchError(f"{name} did not claim a warm instance: it was a cold create")
        phases = {"api_accepted": t_accepted - t0}
        phases |= {f"first_{k}": t - t0 for k, t in sorted(first_seen.items(), key=lambda i: i[1])}
        phases |= step_durations(op, "srv.db.create.")
        return Sample("warm", rnd, t_login - t0, phases)
    finally:
        dbbench.delete_db(client, accepted.instance.id, None)


def raw_measure(
    client: Client, compute_type: str, run_id: str, timeout: float
) -> tuple[str, Callable[[int], Sample]]:
    """The raw baseline of the compute type: (its label, one sample of it)."""
    flavor = FLAVORS[compute_type]
    if compute_type == "container":
        spec = raw_spec(client, dbbench.IMAGE, flavor)
        return "podman", lambda rnd: dbbench.measure_podman(spec, run_id, rnd, timeout)
    if compute_type == "vm":
        flavor_out = next(f for f in client.flavors.list() if f.name == flavor)
        vm_spec = vmbench.raw_vm(flavor_out)

        def qemu(rnd: int) -> Sample:
            with vmbench.QemuWatch() as watch:
                return vmbench.measure_qemu(vm_spec, run_id, rnd, timeout, watch)

        return "qemu", qemu
    return "raw", lambda rnd: bmraw.raw_round(Settings(), rnd)


def bench_type(client: Client, compute_type: str, rounds: int, timeout: float) -> dict[str, Any]:
    flavor = FLAVORS[compute_type]
    run_id = uuid.uuid4().hex[:8]
    raw_label, raw_sample = raw_measure(client, compute_type, run_id, timeout)
    print(f"{NAME} {compute_type}: {flavor}, {rounds} round(s) of warm and {raw_label}", flush=True)
    samples: list[Sample] = []
    client.warm.set(WarmSet(flavor=flavor, count=1))
    try:
        # The first warm one READY (its image made, the bare-metal disk image included),
        # the raw rounds, beside nothing but that idle instance; then the warm ones, each
        # once the keeper has made the next (and the lab's nodes are done cleaning), so
        # neither side runs beside the other's background work.
        wait_ready(client, flavor, timeout)
        for rnd in range(1, rounds + 1):
            samples.append(raw_sample(rnd))
            show(samples[-1])
        for rnd in range(1, rounds + 1):
            wait_ready(client, flavor, timeout)
            if compute_type == "baremetal":
                wait_nodes(client, timeout, quiet=True)
            samples.append(measure_warm(client, flavor, f"bench-warm-{run_id}-{rnd}", rnd, timeout))
            show(samples[-1])
    finally:
        client.warm.set(WarmSet(flavor=flavor, count=0))
        drained(client, flavor, timeout)
        if compute_type == "container":
            podman_remove_labelled(f"oneplatform.bench={run_id}")
    stats, ratio = summarise(f"{NAME} {compute_type}", samples, ("warm", raw_label), rounds)
    goal = GOALS[compute_type]
    if compute_type == "container":
        goal = min(goal, stats[raw_label].median * CONTAINER_RAW_SHARE)
    met = stats["warm"].median <= goal
    print(
        f"  goal: warm median <= {goal:.3f}s: {'met' if met else 'NOT met'} "
        f"({stats['warm'].median:.3f}s)",
        flush=True,
    )
    return {
        "flavor": flavor,
        "raw_label": raw_label,
        "samples": samples,
        "stats": stats,
        "ratio_median_warm_over_raw": ratio,
        "goal_seconds": goal,
        "goal_met": met,
    }


def run(platform: PlatformProcess, rounds: int, timeout: float) -> dict[str, Any]:
    client = platform.client
    flavors = {f.name for f in client.flavors.list()}
    types = [ct for ct, flavor in FLAVORS.items() if flavor in flavors]
    if "baremetal" in types:
        wait_nodes(client, NODES_TIMEOUT_S)
    results = {ct: bench_type(client, ct, rounds, timeout) for ct in types}
    print(f"{NAME} summary: medians (seconds), warm vs raw, in one run:")
    for ct, res in results.items():
        warm, raw = res["stats"]["warm"].median, res["stats"][res["raw_label"]].median
        print(
            f"  {ct:<10} warm {warm:7.3f}  {res['raw_label']:<6} {raw:7.3f}  "
            f"ratio {res['ratio_median_warm_over_raw']:.2f}  goal {res['goal_seconds']:.3f}s "
            f"{'met' if res['goal_met'] else 'NOT met'}",
            flush=True,
        )
    return {
        "benchmark": NAME,
        "rounds": rounds,
        "timeout_seconds": timeout,
        "measures": {
            "warm": "db.create claiming a warm instance -> app logs in to appdb, SELECT 1",
            "podman": "podman run -d + initdb -> pg_isready exits 0",
            "qemu": "the same VM disk in plain QEMU -> the admin logs in",
            "raw": "bench/bmraw.py: the deploy ISO writes the whole image, disk boot, login",
        },
        "by_compute_type": results,
    }
