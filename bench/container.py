"""Container create: the platform's create-to-TCP-ready against a bare ``podman run``.

(a) platform: ``client.instances.create(...)`` -> operation SUCCEEDED -> the endpoint
    accepts TCP on 127.0.0.1. Timed from just before the API call to the first connect.
(b) podman: ``podman run -d`` of the same image ref with the flags the container driver uses
    (``container.run_argv``, the function the driver uses), timed from just before
    ``podman run`` to the first connect on its published port.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from bench.common import (
    BENCH_LABEL,
    TCP_POLL_S,
    BenchError,
    PlatformProcess,
    RawSpec,
    Sample,
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
    wait_tcp,
)
from oneplatform.sdk.client import FINAL, ApiError, Client

NAME = "container-create"
FLAVOR = "container.small"
IMAGE = "postgresql-15"
GUEST_PORT = 5432  # the recipe's `postgresql` port
OP_POLL_S = 0.05
DELETE_TIMEOUT_S = 120.0
TIMEOUT_S = 120.0  # per sample, unless --timeout says otherwise


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


def delete_instance(client: Client, instance_id: str) -> None:
    """Delete through the API and wait; fall back to podman if that fails."""
    try:
        accepted = client.instances.delete(instance_id)
        client.operations.wait(accepted.operation.id, timeout=DELETE_TIMEOUT_S, poll=0.1)
    except ApiError as exc:
        print(f"  warning: deleting instance {instance_id} through the API failed: {exc}")
        podman_remove_instance(instance_id)


# -- (b) bare podman --------------------------------------------------------------------------
def measure_podman(spec: RawSpec, run_id: str, rnd: int, timeout: float) -> Sample:
    name = f"onep-bench-{run_id}-{rnd}"
    port = free_port()
    args = run_args(spec, name, run_id, port, GUEST_PORT)
    t0 = now()
    try:
        podman(args, timeout=timeout)
        t_run = now()
        t_tcp = wait_tcp(port, t0 + timeout)
        return Sample("podman", rnd, t_tcp - t0, {"run_returned": t_run - t0})
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
                show(sample)
                samples.append(sample)
    finally:
        podman_remove_labelled(f"{BENCH_LABEL}={run_id}")

    stats, ratio = summarise(NAME, samples, ("platform", "podman"), rounds)
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
        "poll_seconds": {"tcp": TCP_POLL_S, "operation": OP_POLL_S},
        "samples": samples,
        "stats": stats,
        "ratio_median_platform_over_podman": ratio,
    }
