"""Database create: the platform's create-to-application-login against a bare ``podman run``.

(a) platform: ``client.db.create(...)`` with one database ``appdb`` and one user ``app``
    granted it -> ``client.db.get`` for the endpoint -> ``app`` logs in to ``appdb`` with
    psycopg on 127.0.0.1 and ``SELECT 1`` succeeds. Timed from just before the create call
    to that first successful query; login is tried every ~20 ms.
(b) podman: ``podman run -d`` of the same image ref with the flags the container driver uses
    (``container.run_argv``, the function the driver uses) and the image's own command: with
    no config bundle the guest agent initialises a cluster and starts PostgreSQL with safe
    defaults. Timed from
    just before ``podman run`` until ``pg_isready`` on the published port exits 0 (~20 ms
    polls). No volume is mounted (the platform gives its instance a named data volume), and
    no database or user is made: (b) is the floor of "a PostgreSQL answering", not the same
    work as (a).

Every connection goes to 127.0.0.1, without TLS or GSSAPI (loopback only).
"""

from __future__ import annotations

import secrets
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from bench.common import (
    BENCH_LABEL,
    LOOPBACK,
    BenchError,
    PlatformProcess,
    RawSpec,
    Sample,
    aware,
    free_port,
    now,
    podman,
    podman_remove_instance,
    podman_remove_labelled,
    raw_spec,
    run_args,
    show,
    step_durations,
    summarise,
)
from bench.probes import first_query, wait_first_query
from oneplatform.schemas.operations import OperationOut
from oneplatform.sdk.client import FINAL, ApiError, Client

NAME = "db-create"
FLAVOR = "container.small"
IMAGE = "postgresql-15"  # the image of the `postgresql` datastore's default version
GUEST_PORT = 5432  # the recipe's `postgresql` port
DATABASE = "appdb"
USER = "app"
POLL_S = 0.02  # between login attempts (a) and pg_isready runs (b)
OP_POLL_S = 0.05
CONNECT_TIMEOUT_S = 2  # libpq's minimum
DELETE_TIMEOUT_S = 180.0
TIMEOUT_S = 180.0  # per sample, unless --timeout says otherwise
# How long apart the db.create and its compute instance.create may be enqueued (they are
# made in one transaction).
SAME_REQUEST_S = 5.0


# -- (a) the platform -------------------------------------------------------------------------
def try_login(port: int, password: str) -> str | None:
    """Log in as the application user and run ``SELECT 1``: None when it worked, else the
    kind of failure (see :func:`bench.probes.first_query`)."""
    return first_query("postgresql", port, USER, password, DATABASE)


def wait_login(port: int, password: str, deadline: float) -> tuple[float, dict[str, float]]:
    """Poll until the application user can query; returns when (``now()``) it first did,
    and when each other kind of answer was first seen."""
    return wait_first_query("postgresql", port, USER, password, DATABASE, deadline, POLL_S)


def wait_operation(client: Client, op_id: str, deadline: float) -> OperationOut:
    while True:
        op = client.operations.get(op_id)
        if op.status in FINAL or now() > deadline:
            return op
        time.sleep(OP_POLL_S)


def find_compute_create(client: Client, db_op: OperationOut) -> OperationOut | None:
    """The instance.create of the db instance's compute instance: the API does not list
    service-managed instances, but their operations are listed; it is the one enqueued
    with the db.create (the bench makes one db instance at a time)."""
    created = aware(db_op.created_at)
    candidates = [
        (abs((aware(op.created_at) - created).total_seconds()), op)
        for op in client.operations.list()
        if op.kind == "instance.create"
    ]
    near = [c for c in candidates if c[0] <= SAME_REQUEST_S]
    if not near:
        return None
    resource_id = min(near, key=lambda c: c[0])[1].resource_id
    ops = client.operations.list(resource_id=resource_id)
    return next((op for op in ops if op.kind == "instance.create"), None)


def measure_platform(
    platform: PlatformProcess, name: str, rnd: int, timeout: float
) -> tuple[Sample, dict[str, Any]]:
    client = platform.client
    password = secrets.token_urlsafe(18)
    users = [{"name": USER, "password": password, "databases": [DATABASE]}]
    t0 = now()
    deadline = t0 + timeout
    accepted = client.db.create(name, flavor=FLAVOR, databases=[DATABASE], users=users)
    t_accepted = now()
    db_id, op_id = accepted.instance.id, accepted.operation.id
    compute: OperationOut | None = None
    try:
        endpoint = client.db.get(db_id).endpoint
        while endpoint is None:  # known at once today; bounded if that ever changes
            if now() > deadline:
                raise BenchError(f"db instance {name} has no endpoint after {timeout:g}s")
            time.sleep(POLL_S)
            endpoint = client.db.get(db_id).endpoint
        t_endpoint = now()
        # Always 127.0.0.1, whatever the endpoint says (it is the bind address, loopback).
        t_login, first_seen = wait_login(endpoint.port, password, deadline)
        # -- not timed from here on
        op = wait_operation(client, op_id, now() + timeout)
        if op.status != "SUCCEEDED":
            raise BenchError(f"create of {name} {op.status}: {op.error_code} {op.error_message}")
        compute = find_compute_create(client, op)
        phases = {"api_accepted": t_accepted - t0, "endpoint_known": t_endpoint - t0}
        phases |= {f"first_{k}": t - t0 for k, t in sorted(first_seen.items(), key=lambda i: i[1])}
        phases |= step_durations(op, "srv.db.create.")
        if compute is not None:
            phases |= step_durations(compute, "srv.instance.create.")
        info = {
            "db_instance_id": db_id,
            "compute_instance_id": compute.resource_id if compute else None,
            "endpoint": {"host": endpoint.host, "port": endpoint.port},
        }
        return Sample("platform", rnd, t_login - t0, phases), info
    finally:
        if compute is None:  # on failure: still find what to sweep if the API fails
            with suppress(Exception):
                compute = find_compute_create(client, client.operations.get(op_id))
        if compute is not None:
            platform.instance_ids.add(compute.resource_id)
        delete_db(client, db_id, compute.resource_id if compute else None)


def delete_db(client: Client, db_id: str, compute_id: str | None) -> None:
    """Delete through the API and wait; fall back to podman if that fails."""
    try:
        accepted = client.db.delete(db_id)
        client.operations.wait(accepted.operation.id, timeout=DELETE_TIMEOUT_S, poll=0.1)
    except ApiError as exc:
        print(f"  warning: deleting db instance {db_id} through the API failed: {exc}")
        if compute_id is not None:
            podman_remove_instance(compute_id)


# -- (b) bare podman --------------------------------------------------------------------------
def pg_isready(port: int) -> int:
    """``pg_isready``'s exit code: 0 accepting, 1 rejecting (starting), 2 no response."""
    try:
        proc = subprocess.run(
            ["pg_isready", "-q", "-h", LOOPBACK, "-p", str(port), "-t", "1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return 2
    return proc.returncode


def measure_podman(spec: RawSpec, run_id: str, rnd: int, timeout: float) -> Sample:
    name = f"onep-bench-{run_id}-db-{rnd}"
    port = free_port()
    args = run_args(spec, name, run_id, port, GUEST_PORT, command=())  # the image's own CMD
    t0 = now()
    deadline = t0 + timeout
    try:
        podman(args, timeout=timeout)
        phases = {"run_returned": now() - t0}
        while True:
            code = pg_isready(port)
            t = now()
            if code == 0:
                return Sample("podman", rnd, t - t0, phases)
            if code == 1:
                phases.setdefault("first_rejecting", t - t0)
            if t > deadline:
                raise BenchError(f"{name}: pg_isready still exits {code} after {timeout:g}s")
            time.sleep(POLL_S)
    finally:
        podman(["rm", "-f", "-v", "--ignore", name], timeout=DELETE_TIMEOUT_S, check=False)


# -- the benchmark ----------------------------------------------------------------------------
def run(platform: PlatformProcess, rounds: int, timeout: float) -> dict[str, Any]:
    """Warm up each side once, then ``rounds`` rounds of platform, podman alternately."""
    client = platform.client
    spec = raw_spec(client, IMAGE, FLAVOR)
    run_id = uuid.uuid4().hex[:8]
    print(
        f"{NAME}: image {spec.ref}, flavor {FLAVOR} ({spec.vcpus} vCPU, {spec.ram_mb} MB), "
        f"runtime {spec.runtime}, {rounds} round(s), {timeout:g}s per sample",
        flush=True,
    )
    instances: list[dict[str, Any]] = []

    def platform_sample(rnd: int) -> Sample:
        sample, info = measure_platform(platform, f"bench-{run_id}-{rnd}", rnd, timeout)
        instances.append({"round": rnd, **info})
        return sample

    measures: list[Callable[[int], Sample]] = [
        platform_sample,
        lambda rnd: measure_podman(spec, run_id, rnd, timeout),
    ]
    samples: list[Sample] = []
    try:
        for rnd in range(rounds + 1):  # round 0: warm-up
            for measure in measures:
                sample = measure(rnd)
                show(sample)
                samples.append(sample)
    finally:
        podman_remove_labelled(f"{BENCH_LABEL}={run_id}")

    stats, ratio = summarise(NAME, samples, ("platform", "podman"), rounds)
    steps = step_medians([s for s in samples if s.label == "platform" and s.round > 0])
    if steps:
        print("  platform phases and server steps, medians (seconds):")
        for key, value in steps.items():
            print(f"    {key:<40} {value:7.3f}")
    return {
        "benchmark": NAME,
        "image": IMAGE,
        "image_ref": spec.ref,
        "flavor": FLAVOR,
        "vcpus": spec.vcpus,
        "ram_mb": spec.ram_mb,
        "runtime": spec.runtime,
        "rounds": rounds,
        "timeout_seconds": timeout,
        "poll_seconds": {"login": POLL_S, "pg_isready": POLL_S, "operation": OP_POLL_S},
        "measures": {
            "platform": f"db.create -> {USER} logs in to {DATABASE} and SELECT 1 succeeds",
            "podman": "podman run -d (image's own command, no bundle) -> pg_isready exits 0",
        },
        "samples": samples,
        "platform_instances": instances,
        "stats": stats,
        "platform_phase_medians": steps,
        "ratio_median_platform_over_podman": ratio,
    }


def step_medians(samples: list[Sample]) -> dict[str, float]:
    """Median of every phase present in all the samples, in first-seen order."""
    if not samples:
        return {}
    keys = [k for k in samples[0].phases if all(k in s.phases for s in samples)]
    return {k: statistics.median(s.phases[k] for s in samples) for k in keys}
