"""Create -> first query, per engine and per compute type, against each engine's raw start on
the same compute type. ``python -m bench engines``; not run by default (it boots VMs and
deploys bare-metal nodes under TCG). ``BENCH_ENGINES`` (of postgresql, mariadb, redis) and
``BENCH_COMPUTE`` (of container, vm, baremetal), comma-separated, pick a part.

For each engine (the datastore's default version) on each compute type's ``*.small`` flavor:

(a) platform: ``client.db.create(...)`` with a database ``appdb`` where the engine has
    databases (its capabilities say) and a user ``app`` granted it -> ``app`` runs the
    engine's simplest query with the engine's own client library (psycopg, PyMySQL,
    redis-py: :mod:`bench.probes`) through the endpoint on 127.0.0.1. Timed from just
    before the create call to the first success (tried every :data:`POLL_S`). Deleted and
    waited for after (not timed; bare metal: until the node is cleaned).
(b) raw: the same image started by hand, as each compute type's own benchmark does it:
    container: ``podman run`` of the image with its own command and no bundle (the driver's
    flags, :func:`bench.common.run_args`) -> the engine answers its protocol on the
    published port (a login refused for want of a user counts: nobody was made);
    vm: plain QEMU on the image's qcow2 with a bundle (:func:`bench.vm.measure_qemu`) ->
    the admin runs the simplest query; baremetal: the deploy ISO in a plain QEMU writes the
    whole image, then the disk boots (:func:`bench.bmraw.raw_round`) -> the admin runs it.

One untimed warm-up pair per cell (it also builds the image formats the raw side needs),
then the rounds, platform and raw alternately; before each VM or bare-metal sample the
bench waits (bounded) until no other QEMU runs. Medians and platform/raw per cell.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import uuid
from contextlib import suppress
from typing import Any

from bench import bmraw, vm
from bench.baremetal import NODES_TIMEOUT_S, wait_nodes
from bench.common import (
    BENCH_LABEL,
    BenchError,
    PlatformProcess,
    Sample,
    free_port,
    now,
    podman,
    podman_remove_labelled,
    raw_spec,
    run_args,
    show,
    step_durations,
    summarise,
)
from bench.db import wait_operation
from bench.probes import wait_first_query
from bench.replication import platform_env as lab_env
from oneplatform.config import Settings
from oneplatform.dbaas.datastores import get_datastore, get_version
from oneplatform.images.recipes import load_recipe
from oneplatform.sdk.client import Client

NAME = "engines-create"
ENGINES = ("postgresql", "mariadb", "redis")
COMPUTE = {"container": "container.small", "vm": "vm.small", "baremetal": "baremetal.small"}
DATABASE = "appdb"
USER = "app"
POLL_S = 0.1
TIMEOUT_S = 900.0  # per sample, unless --timeout says otherwise
ROUNDS = 3  # unless --rounds says otherwise
DELETE_TIMEOUT_S = 900.0
QUIET_WAIT_S = 600.0


def platform_env() -> dict[str, str]:
    """Its own `onep up`, with the bare-metal lab enrolled when bare metal is measured."""
    return lab_env() if "baremetal" in chosen("BENCH_COMPUTE", tuple(COMPUTE)) else {}


def chosen(variable: str, known: tuple[str, ...]) -> list[str]:
    names = [n.strip() for n in os.environ.get(variable, "").split(",") if n.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise BenchError(f"{variable}: unknown {unknown}; known: {list(known)}")
    return names or list(known)


def has_databases(client: Client, datastore: str) -> bool:
    """Whether the datastore's default version makes databases (its capabilities)."""
    store = next((d for d in client.db.datastores() if d.name == datastore), None)
    if store is None:
        raise BenchError(f"the platform has no datastore {datastore!r}")
    version = next((v for v in store.versions if v.default), store.versions[0])
    return any(c.name == "databases" and c.supported for c in version.capabilities)


# -- (a) the platform -----------------------------------------------------------------------------
def measure_platform(
    client: Client, datastore: str, flavor: str, name: str, rnd: int, timeout: float
) -> Sample:
    password = secrets.token_urlsafe(18)
    databases = [DATABASE] if has_databases(client, datastore) else []
    users = [{"name": USER, "password": password, "databases": databases}]
    t0 = now()
    deadline = t0 + timeout
    accepted = client.db.create(
        name, flavor=flavor, datastore=datastore, databases=databases, users=users
    )
    db_id, op_id = accepted.instance.id, accepted.operation.id
    try:
        endpoint = client.db.get(db_id).endpoint
        if endpoint is None:
            raise BenchError(f"db instance {name} has no endpoint")
        database = databases[0] if databases else None
        t_query, first_seen = wait_first_query(
            datastore, endpoint.port, USER, password, database, deadline, POLL_S
        )
        op = wait_operation(client, op_id, now() + timeout)  # not timed from here on
        if op.status != "SUCCEEDED":
            raise BenchError(f"create of {name} {op.status}: {op.error_code} {op.error_message}")
        phases = {f"first_{k}": t - t0 for k, t in sorted(first_seen.items(), key=lambda i: i[1])}
        phases |= step_durations(op, "srv.db.create.")
        return Sample("platform", rnd, t_query - t0, phases)
    finally:
        vm.delete_db(client, db_id, DELETE_TIMEOUT_S)


# -- (b) raw --------------------------------------------------------------------------------------
def measure_podman(
    client: Client, datastore: str, flavor: str, run_id: str, rnd: int, timeout: float
) -> Sample:
    store = get_datastore(datastore)
    image = get_version(store, None).image
    guest_port = int(load_recipe(image).ports[store.engine_endpoint])
    spec = raw_spec(client, image, flavor)
    name = f"onep-bench-{run_id}-{datastore}-{rnd}"
    port = free_port()
    args = run_args(spec, name, run_id, port, guest_port, command=())  # the image's own CMD
    t0 = now()
    try:
        podman(args, timeout=timeout)
        t_answer, first_seen = wait_first_query(
            datastore, port, None, None, None, t0 + timeout, POLL_S, answered=True
        )
        phases = {f"first_{k}": t - t0 for k, t in sorted(first_seen.items(), key=lambda i: i[1])}
        return Sample("raw", rnd, t_answer - t0, phases)
    finally:
        podman(["rm", "-f", "-v", "--ignore", name], timeout=DELETE_TIMEOUT_S, check=False)


def measure_qemu(client: Client, datastore: str, flavor_name: str, run_id: str, rnd: int,
                 timeout: float) -> Sample:  # fmt: skip
    flavor = next((f for f in client.flavors.list() if f.name == flavor_name), None)
    if flavor is None:
        raise BenchError(f"the platform has no flavor {flavor_name!r}")
    spec = vm.raw_vm(flavor, datastore)
    with vm.QemuWatch() as watch:
        sample = vm.measure_qemu(spec, f"{run_id}-{datastore}", rnd, timeout, watch)
    return Sample("raw", rnd, sample.seconds, sample.phases)


def measure_bare(datastore: str, rnd: int) -> Sample:
    sample = bmraw.raw_round(Settings(), rnd, datastore)
    return Sample("raw", rnd, sample.seconds, sample.phases)


def measure(
    side: str, client: Client, datastore: str, compute_type: str, run_id: str, rnd: int,
    timeout: float,
) -> Sample:  # fmt: skip
    """One sample of a cell: the platform's create, or the raw start on the compute type."""
    flavor = COMPUTE[compute_type]
    if side == "platform":
        name = f"bench-{run_id}-{datastore[:5]}-{rnd}"
        return measure_platform(client, datastore, flavor, name, rnd, timeout)
    if compute_type == "container":
        return measure_podman(client, datastore, flavor, run_id, rnd, timeout)
    if compute_type == "vm":
        return measure_qemu(client, datastore, flavor, run_id, rnd, timeout)
    return measure_bare(datastore, rnd)


# -- the benchmark --------------------------------------------------------------------------------
def run(platform: PlatformProcess, rounds: int, timeout: float) -> dict[str, Any]:
    client = platform.client
    engines = chosen("BENCH_ENGINES", ENGINES)
    types = chosen("BENCH_COMPUTE", tuple(COMPUTE))
    flavors = {f.name for f in client.flavors.list()}
    missing = [COMPUTE[t] for t in types if COMPUTE[t] not in flavors]
    if missing:
        raise BenchError(f"the platform has no flavor {missing} (onep up's log says why)")
    if "baremetal" in types:
        wait_nodes(client, NODES_TIMEOUT_S)
    run_id = uuid.uuid4().hex[:8]
    print(
        f"{NAME}: {', '.join(engines)} on {', '.join(COMPUTE[t] for t in types)}; "
        f"{rounds} round(s) after a warm-up, {timeout:g}s per sample",
        flush=True,
    )
    cells: dict[str, Any] = {}
    try:
        for compute_type in types:
            flavor = COMPUTE[compute_type]
            for datastore in engines:
                cell = f"{datastore} on {compute_type}"
                print(f"  -- {cell}", flush=True)

                samples: list[Sample] = []
                for rnd in range(rounds + 1):  # round 0: the warm-up
                    for side in ("platform", "raw"):
                        if compute_type != "container":
                            if compute_type == "baremetal":
                                wait_nodes(client, NODES_TIMEOUT_S, quiet=True)
                            if vm.wait_quiet(QUIET_WAIT_S):
                                print("  warning: other QEMUs still run", flush=True)
                        sample = measure(
                            side, client, datastore, compute_type, run_id, rnd, timeout
                        )
                        show(sample)
                        samples.append(sample)
                stats, ratio = summarise(cell, samples, ("platform", "raw"), rounds)
                cells[cell] = {
                    "datastore": datastore,
                    "compute_type": compute_type,
                    "flavor": flavor,
                    "samples": samples,
                    "stats": stats,
                    "ratio_median_platform_over_raw": ratio,
                }
    finally:
        with suppress(BenchError, subprocess.SubprocessError):
            podman_remove_labelled(f"{BENCH_LABEL}={run_id}")
    print(f"{NAME}: create -> first query, medians (seconds)", flush=True)
    for cell, result in cells.items():
        stats = result["stats"]
        print(
            f"  {cell:<26} platform {stats['platform'].median:8.2f}  raw "
            f"{stats['raw'].median:8.2f}  ratio {result['ratio_median_platform_over_raw']:.2f}",
            flush=True,
        )
    return {
        "benchmark": NAME,
        "rounds": rounds,
        "timeout_seconds": timeout,
        "poll_seconds": POLL_S,
        "measures": {
            "platform": f"db.create -> {USER} runs the engine's simplest query (in {DATABASE} "
            "where the engine has databases) with its own client library",
            "raw": "container: podman run, no bundle -> the engine answers; vm: plain QEMU, "
            "bundle -> the admin's query; baremetal: deploy ISO + disk boot in plain QEMU -> "
            "the admin's query",
        },
        "cells": cells,
    }
