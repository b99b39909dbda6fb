"""Container create: the platform's create-to-TCP-ready against a bare ``podman run``.

(a) platform: ``client.instances.create(...)`` -> operation SUCCEEDED -> the endpoint
    accepts TCP on 127.0.0.1. Timed from just before the API call to the first connect.
(b) podman: ``podman run -d`` of the same image ref with the flags the container driver uses
    (see ``PodmanDriver._run_args``), timed from just before ``podman run`` to the first
    connect on its published port.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.common import (
    LOOPBACK,
    TCP_POLL_S,
    BenchError,
    PlatformProcess,
    Sample,
    Summary,
    free_port,
    now,
    podman,
    podman_remove_labelled,
    wait_tcp,
)
from oneplatform.api.schemas import OperationOut
from oneplatform.config import Settings
from oneplatform.images.builder import artifact_for
from oneplatform.images.recipes import load_recipe
from oneplatform.sdk.client import FINAL, ApiError, Client

NAME = "container-create"
FLAVOR = "container.small"
IMAGE = "postgresql-15"
GUEST_PORT = 5432  # the recipe's `postgresql` port
OP_POLL_S = 0.05
DELETE_TIMEOUT_S = 120.0
BENCH_LABEL = "oneplatform.bench"


@dataclass(frozen=True)
class RawSpec:
    """What ``podman run`` needs to start the image the way the container driver does."""

    ref: str
    command: tuple[str, ...]
    runtime: str
    vcpus: int
    ram_mb: int


def raw_spec(client: Client) -> RawSpec:
    """The image ref the platform built, and the flavor and runtime the platform uses."""
    artifact = artifact_for(load_recipe(IMAGE), Settings().images_dir)
    flavor = next((f for f in client.flavors.list() if f.name == FLAVOR), None)
    if flavor is None:
        raise BenchError(f"the platform has no flavor {FLAVOR!r}")
    pools = [p for p in client.pools.list() if p.compute_type == flavor.compute_type]
    runtime = str(pools[0].settings.get("runtime", "runc")) if pools else "runc"
    return RawSpec(artifact.ref, artifact.command, runtime, flavor.vcpus, flavor.ram_mb)


def run_args(spec: RawSpec, name: str, run_id: str, host_port: int) -> list[str]:
    """``podman run`` arguments mirroring ``PodmanDriver._run_args`` (labels aside)."""
    return [
        "run",
        "--detach",
        "--pull=never",
        "--name",
        name,
        "--label",
        f"{BENCH_LABEL}={run_id}",
        "--runtime",
        spec.runtime,
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
        "--cpus",
        str(spec.vcpus),
        "--memory",
        f"{spec.ram_mb}m",
        "-p",
        f"{LOOPBACK}:{host_port}:{GUEST_PORT}/tcp",
        spec.ref,
        *spec.command,
    ]


# -- (a) the platform -------------------------------------------------------------------------
def measure_platform(platform: PlatformProcess, name: str, rnd: int, timeout: float) -> Sample:
    client = platform.client
    t0 = now()
    accepted = client.instances.create(name, flavor=FLAVOR, image=IMAGE)
    t_accepted = now()
    instance_id = accepted.instance.id
    platform.instance_ids.add(instance_id)
    try:
        deadline = t0 + timeout
        op_id = accepted.operation.id
        while True:
            op = client.operations.get(op_id)
            if op.status in FINAL:
                break
            if now() > deadline:
                raise BenchError(f"create of {name} not done after {timeout:g}s ({op.status})")
            time.sleep(OP_POLL_S)
        t_op = now()
        if op.status != "SUCCEEDED":
            raise BenchError(f"create of {name} {op.status}: {op.error_code} {op.error_message}")
        instance = client.instances.get(instance_id)
        ports = [e.port for e in instance.endpoints if e.name == "postgresql"]
        if not ports:
            raise BenchError(f"instance {name} has no postgresql endpoint: {instance.endpoints}")
        t_tcp = wait_tcp(ports[0], deadline)  # always 127.0.0.1, whatever the endpoint says
        phases = {"api_accepted": t_accepted - t0, "op_succeeded": t_op - t0}
        return Sample("platform", rnd, t_tcp - t0, phases | step_durations(op))
    finally:
        delete_instance(client, instance_id)


def step_durations(op: OperationOut) -> dict[str, float]:
    """Server-side: seconds from acceptance to the first step, and each step's duration
    (first start to finish, retries included). Durations, not offsets from the sample start."""
    out: dict[str, float] = {}
    first = op.steps[0].started_at if op.steps else None
    if first:
        created = op.created_at if op.created_at.tzinfo else op.created_at.replace(tzinfo=dt.UTC)
        out["srv.queued"] = (_when(first) - created).total_seconds()
    for step in op.steps:
        if step.started_at and step.finished_at:
            seconds = (_when(step.finished_at) - _when(step.started_at)).total_seconds()
            out[f"srv.{step.name}"] = seconds
    return out


def _when(iso: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(iso)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def delete_instance(client: Client, instance_id: str) -> None:
    """Delete through the API and wait; fall back to podman if that fails."""
    try:
        accepted = client.instances.delete(instance_id)
        client.operations.wait(accepted.operation.id, timeout=DELETE_TIMEOUT_S, poll=0.1)
    except ApiError as exc:
        print(f"  warning: deleting instance {instance_id} through the API failed: {exc}")
        podman_remove_labelled(f"oneplatform.instance={instance_id}")


# -- (b) bare podman --------------------------------------------------------------------------
def measure_podman(spec: RawSpec, run_id: str, rnd: int, timeout: float) -> Sample:
    name = f"onep-bench-{run_id}-{rnd}"
    port = free_port()
    args = run_args(spec, name, run_id, port)
    t0 = now()
    try:
        podman(args, timeout=timeout)
        t_run = now()
        t_tcp = wait_tcp(port, t0 + timeout)
        return Sample("podman", rnd, t_tcp - t0, {"run_returned": t_run - t0})
    finally:
        podman(["rm", "-f", "-v", "--ignore", name], timeout=DELETE_TIMEOUT_S, check=False)


# -- the benchmark ----------------------------------------------------------------------------
def _show(sample: Sample) -> None:
    client_side = {k: v for k, v in sample.phases.items() if not k.startswith("srv.")}
    server_side = {k[4:]: v for k, v in sample.phases.items() if k.startswith("srv.")}
    phases = "  ".join(f"{k}@{v:.3f}s" for k, v in client_side.items())
    which = "warm-up" if sample.round == 0 else f"round {sample.round}"
    print(f"  {which:<9} {sample.label:<8} {sample.seconds:7.3f}s   ({phases})", flush=True)
    if server_side:
        steps = "  ".join(f"{k}={v:.3f}s" for k, v in server_side.items())
        print(f"  {'':<9} {'':<8}            server steps: {steps}", flush=True)


def run(platform: PlatformProcess, rounds: int, timeout: float) -> dict[str, Any]:
    """Warm up each side once, then ``rounds`` rounds of platform, podman alternately."""
    client = platform.client
    spec = raw_spec(client)
    run_id = uuid.uuid4().hex[:8]
    print(
        f"{NAME}: image {spec.ref}, flavor {FLAVOR} ({spec.vcpus} vCPU, {spec.ram_mb} MB), "
        f"runtime {spec.runtime}, {rounds} round(s)",
        flush=True,
    )
    measures: list[Callable[[int], Sample]] = [
        lambda rnd: measure_platform(platform, f"bench-{run_id}-{rnd}", rnd, timeout),
        lambda rnd: measure_podman(spec, run_id, rnd, timeout),
    ]
    samples: list[Sample] = []
    try:
        for rnd in range(rounds + 1):  # round 0: warm-up (also imports the image into podman)
            for measure in measures:
                sample = measure(rnd)
                _show(sample)
                samples.append(sample)
    finally:
        podman_remove_labelled(f"{BENCH_LABEL}={run_id}")

    timed = [s for s in samples if s.round > 0]
    stats = {
        label: Summary.of([s.seconds for s in timed if s.label == label])
        for label in ("platform", "podman")
    }
    ratio = stats["platform"].median / stats["podman"].median
    print(f"{NAME} summary (seconds, {rounds} round(s), warm-up excluded):")
    for label, st in stats.items():
        print(f"  {label:<8} median {st.median:.3f}  min {st.min:.3f}  max {st.max:.3f}")
    print(f"  ratio median(platform)/median(podman) = {ratio:.2f}", flush=True)
    return {
        "benchmark": NAME,
        "image": IMAGE,
        "image_ref": spec.ref,
        "flavor": FLAVOR,
        "vcpus": spec.vcpus,
        "ram_mb": spec.ram_mb,
        "runtime": spec.runtime,
        "rounds": rounds,
        "poll_seconds": {"tcp": TCP_POLL_S, "operation": OP_POLL_S},
        "samples": samples,
        "stats": stats,
        "ratio_median_platform_over_podman": ratio,
    }
