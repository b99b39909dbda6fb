"""Shared helpers for benchmarks: timing, statistics, Podman, and an `onep up` process.

Everything here talks only to 127.0.0.1. Every wait is bounded by a deadline.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform as _platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from oneplatform.compute.drivers.base import InstanceSpec, PortMapping
from oneplatform.compute.drivers.container import run_argv
from oneplatform.config import Settings
from oneplatform.images.artifacts import ImageArtifact
from oneplatform.images.builder import artifact_for
from oneplatform.images.recipes import load_recipe
from oneplatform.schemas.operations import OperationOut
from oneplatform.sdk.client import Client

LOOPBACK = "127.0.0.1"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TCP_POLL_S = 0.02
# A port range of its own, so the bench's instances never collide with those of a developer's
# `onep up` or of the end-to-end tests (default 20000-29999) running at the same time.
PORT_RANGE = (31000, 31999)
# ONEP_* variables passed on to the bench's `onep up`: where images are cached and which OCI
# runtime to use describe the machine, not a platform instance. Every other one is dropped
# (a benchmark may set some of its own: see PlatformProcess's extra_env).
PASSED_ENV = frozenset({"ONEP_IMAGE_CACHE", "ONEP_PODMAN_RUNTIME"})
BENCH_IMAGES = "postgresql-15"
# What the bench's `onep up` enrolls as bare-metal nodes unless a benchmark says otherwise:
# a file that does not exist (in its home), so it never touches the shared bare-metal lab.
NO_BMLAB_FILE = "no-bmlab.json"
# Label on the bare-podman containers of a run (value: the run's id), swept at its end.
BENCH_LABEL = "oneplatform.bench"
# What the container driver names and labels (see compute/drivers/container.py).
INSTANCE_LABEL = "oneplatform.instance"
INSTANCE_PREFIX = "onep-"

now = time.perf_counter


class BenchError(Exception):
    """A benchmark could not take a sample (timeout, failed operation, podman error)."""


# -- timing and statistics --------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One timed run. ``seconds`` is the figure; ``phases`` are offsets from its start."""

    label: str
    round: int  # 0 is the warm-up
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            raise ValueError("no samples to summarise")
        return cls(len(values), statistics.median(values), min(values), max(values))


def summarise(
    name: str, samples: Sequence[Sample], labels: tuple[str, str], rounds: int
) -> tuple[dict[str, Summary], float]:
    """Print and return the statistics of the timed samples (warm-up excluded) per label,
    and median(labels[0]) / median(labels[1])."""
    timed = [s for s in samples if s.round > 0]
    stats = {label: Summary.of([s.seconds for s in timed if s.label == label]) for label in labels}
    ratio = stats[labels[0]].median / stats[labels[1]].median
    print(f"{name} summary (seconds, {rounds} round(s), warm-up excluded):")
    for label, st in stats.items():
        print(f"  {label:<8} median {st.median:.3f}  min {st.min:.3f}  max {st.max:.3f}")
    print(f"  ratio median({labels[0]})/median({labels[1]}) = {ratio:.2f}", flush=True)
    return stats, ratio


def show(sample: Sample) -> None:
    """Print a sample: client-side phases on its line, then one line per group of server-side
    step durations (phases named ``srv.STEP`` or ``srv.GROUP.STEP``)."""
    client_side = {k: v for k, v in sample.phases.items() if not k.startswith("srv.")}
    groups: dict[str, dict[str, float]] = {}
    for key, value in sample.phases.items():
        if key.startswith("srv."):
            group, _, step = key[4:].rpartition(".")
            groups.setdefault(group, {})[step] = value
    phases = "  ".join(f"{k}@{v:.3f}s" for k, v in client_side.items())
    which = "warm-up" if sample.round == 0 else f"round {sample.round}"
    print(f"  {which:<9} {sample.label:<8} {sample.seconds:7.3f}s   ({phases})", flush=True)
    for group, steps in groups.items():
        title = f"{group} steps" if group else "server steps"
        text = "  ".join(f"{k}={v:.3f}s" for k, v in steps.items())
        print(f"  {'':<9} {'':<8}            {title}: {text}", flush=True)


def step_durations(op: OperationOut, prefix: str = "srv.") -> dict[str, float]:
    """Server-side: seconds from acceptance to the first step (``queued``), each step's
    duration (first start to finish, retries included), and, once the operation ended,
    acceptance to end (``total``). Durations, not offsets from the sample start."""
    out: dict[str, float] = {}
    created = aware(op.created_at)
    first = op.steps[0].started_at if op.steps else None
    if first:
        out[f"{prefix}queued"] = (_when(first) - created).total_seconds()
    for step in op.steps:
        if step.started_at and step.finished_at:
            seconds = (_when(step.finished_at) - _when(step.started_at)).total_seconds()
            out[f"{prefix}{step.name}"] = seconds
    if op.finished_at is not None:
        out[f"{prefix}total"] = (aware(op.finished_at) - created).total_seconds()
    return out


def _when(iso: str) -> dt.datetime:
    return aware(dt.datetime.fromisoformat(iso))


def aware(value: dt.datetime) -> dt.datetime:
    """``value`` with UTC as its zone when it has none (the API's times are UTC)."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def tcp_accepts(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_tcp(port: int, deadline: float, interval: float = TCP_POLL_S) -> float:
    """Poll until 127.0.0.1:``port`` accepts a connection; returns when (``now()``) it did."""
    while True:
        if tcp_accepts(port):
            return now()
        if now() > deadline:
            raise BenchError(f"127.0.0.1:{port} did not accept a TCP connection in time")
        time.sleep(interval)


# -- podman -----------------------------------------------------------------------------------
def podman(args: Sequence[str], timeout: float = 120.0, check: bool = True) -> str:
    """Run ``podman ARGS``; returns stdout, raises BenchError on failure when ``check``."""
    try:
        proc = subprocess.run(
            ["podman", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"podman {' '.join(args[:2])} timed out after {timeout:g}s") from exc
    if check and proc.returncode != 0:
        raise BenchError(
            f"podman {' '.join(args[:2])} exited {proc.returncode}: {proc.stderr.strip()}"
        )
    return proc.stdout


def podman_remove_labelled(label: str) -> None:
    """Force-remove every container carrying ``label`` (``key=value``); never raises."""
    try:
        ids = podman(["ps", "-a", "-q", "--filter", f"label={label}"], check=False).split()
        if ids:
            podman(["rm", "-f", "-v", "--ignore", *ids], check=False)
    except BenchError:
        pass


def podman_remove_instance(instance_id: str) -> None:
    """Force-remove what the container driver made for a platform instance: its container,
    its volumes and its config-bundle secret. Never raises."""
    podman_remove_labelled(f"{INSTANCE_LABEL}={instance_id}")
    try:
        volumes = podman(
            ["volume", "ls", "-q", "--filter", f"label={INSTANCE_LABEL}={instance_id}"],
            check=False,
        ).split()
        if volumes:
            podman(["volume", "rm", "-f", *volumes], check=False)
        # Absent (already removed, or a plain instance): podman says so and nothing happens.
        podman(["secret", "rm", f"{INSTANCE_PREFIX}{instance_id}-bundle"], check=False)
    except BenchError:
        pass


@dataclass(frozen=True)
class RawSpec:
    """What ``podman run`` needs to start an image the way the container driver does."""

    ref: str
    command: tuple[str, ...]
    runtime: str
    vcpus: int
    ram_mb: int


def raw_spec(client: Client, image: str, flavor_name: str) -> RawSpec:
    """The image ref the platform built, and the flavor and runtime the platform uses."""
    artifact = artifact_for(load_recipe(image), Settings().images_dir)
    flavor = next((f for f in client.flavors.list() if f.name == flavor_name), None)
    if flavor is None:
        raise BenchError(f"the platform has no flavor {flavor_name!r}")
    pools = [p for p in client.pools.list() if p.compute_type == flavor.compute_type]
    runtime = str(pools[0].settings.get("runtime", "runc")) if pools else "runc"
    return RawSpec(artifact.ref, artifact.command, runtime, flavor.vcpus, flavor.ram_mb)


def run_args(
    spec: RawSpec,
    name: str,
    run_id: str,
    host_port: int,
    guest_port: int,
    command: Sequence[str] | None = None,
) -> list[str]:
    """``podman run`` arguments from the container driver's own ``run_argv`` (with the
    benchmark's label instead of the platform's, and no volumes, files or secrets), so the
    baseline cannot drift from what the driver runs. ``command``: the spec's when None, the
    image's own when empty."""
    image = ImageArtifact(
        name=spec.ref,
        ref=spec.ref,
        rootfs=None,
        command=tuple(spec.command if command is None else command),
    )
    instance = InstanceSpec(
        instance_id=run_id,
        name=name,
        image=image,
        vcpus=spec.vcpus,
        ram_mb=spec.ram_mb,
        disk_gb=1,
        ports=(PortMapping("service", guest_port, host_port),),
    )
    return run_argv(instance, spec.runtime, LOOPBACK, {BENCH_LABEL: run_id}, name=name)


# -- the platform as a process ----------------------------------------------------------------
def onep_executable() -> str:
    beside = Path(sys.executable).with_name("onep")
    if beside.exists():
        return str(beside)
    found = shutil.which("onep")
    if found is None:
        raise BenchError("the onep console script is not installed (run `make setup`)")
    return found


class PlatformProcess:
    """One `onep up` with a temporary ONEP_HOME and a free port, in its own process group.
    ``extra_env``: ONEP_* variables of a benchmark's own, set last."""

    def __init__(self, keep_home: bool = False, extra_env: Mapping[str, str] | None = None) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="onep-bench-"))
        self.port = free_port()
        self.keep_home = keep_home
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: Client | None = None
        # Every instance a benchmark created; their containers are swept after the stop.
        self.instance_ids: set[str] = set()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONEP_") or k in PASSED_ENV}
        env.update(
            ONEP_HOME=str(self.home),
            ONEP_HOST=LOOPBACK,
            ONEP_BIND_ADDRESS=LOOPBACK,
            ONEP_PORT_RANGE_START=str(PORT_RANGE[0]),
            ONEP_PORT_RANGE_END=str(PORT_RANGE[1]),
            ONEP_BMLAB_FILE=str(self.home / NO_BMLAB_FILE),
            # what its start builds: PostgreSQL's image (a benchmark of another engine
            # names its own); the others build on first use
            ONEP_IMAGES=BENCH_IMAGES,
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 120.0) -> None:
        with (self.home / "up.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [onep_executable(), "up", "--port", str(self.port)],
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = now() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"onep up exited {self.proc.returncode} (its log is above)")
            if self._status_ok():
                return
            if now() > deadline:
                raise BenchError(f"onep up did not answer in {timeout:g}s (its log is above)")
            time.sleep(0.2)

    def _status_ok(self) -> bool:
        try:
            proc = subprocess.run(
                [onep_executable(), "status"],
                env=self.env(),
                capture_output=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0

    @property
    def client(self) -> Client:
        if self._client is None:
            saved = json.loads((self.home / "cli.json").read_text())
            self._client = Client(saved["url"], saved["token"])
        return self._client

    def wait_images_ready(self, timeout: float = 1800.0) -> None:
        """The images its start builds (ONEP_IMAGES) READY; the first time on a machine this
        is the (long) image build."""
        wanted = set(self.env()["ONEP_IMAGES"].split(","))
        deadline = now() + timeout
        announced = False
        while True:
            images = [i for i in self.client.images.list() if i.name in wanted]
            failed = [i for i in images if i.status == "ERROR"]
            if failed:
                raise BenchError(f"image build failed: {failed}")
            if {i.name for i in images} == wanted and all(i.status == "READY" for i in images):
                return
            if not announced:
                print("waiting for images to be built (first run on this machine)...", flush=True)
                announced = True
            if now() > deadline:
                raise BenchError(f"images not READY after {timeout:g}s: {images}")
            time.sleep(1.0)

    def log_tail(self, chars: int = 3000) -> str:
        path = self.home / "up.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after 20 s; then force-remove the containers,
        volumes and secrets of every instance it knew (a create still in flight may have
        outlived its delete), and the home unless kept."""
        if self._client is not None:
            with suppress(Exception):
                self.instance_ids.update(i.id for i in self._client.instances.list())
            with suppress(Exception):  # instances made for a service (db) are not listed
                ops = self._client.operations.list()
                self.instance_ids.update(
                    o.resource_id for o in ops if o.resource_type == "instance"
                )
            self._client.close()
            self._client = None
        if self.proc is not None and self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
        if self.proc is not None:  # stragglers the group leader left behind
            _signal_group(self.proc.pid, signal.SIGKILL)
        for instance_id in sorted(self.instance_ids):
            podman_remove_instance(instance_id)
        if not self.keep_home:
            shutil.rmtree(self.home, ignore_errors=True)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, sig)


@contextmanager
def running_platform(
    keep_home: bool = False, extra_env: Mapping[str, str] | None = None
) -> Iterator[PlatformProcess]:
    """`onep up` answering `onep status` with every image READY; stopped on exit."""
    p = PlatformProcess(keep_home=keep_home, extra_env=extra_env)
    try:
        print(f"starting onep up on 127.0.0.1:{p.port} (ONEP_HOME={p.home})", flush=True)
        p.start()
        p.wait_images_ready()
        yield p
    except BaseException:
        if p.proc is not None:
            print(f"--- tail of onep up's log ---\n{p.log_tail()}", file=sys.stderr)
        raise
    finally:
        p.stop()


# -- results ----------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    version = podman(["--version"], check=False).strip()
    return {
        "hostname": _platform.node(),
        "kernel": _platform.release(),
        "cpus": os.cpu_count(),
        "python": _platform.python_version(),
        "podman": version,
    }


def to_jsonable(value: Any) -> Any:
    if isinstance(value, Sample | Summary):
        return asdict(value)
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def write_results(name: str, data: dict[str, Any], directory: Path = RESULTS_DIR) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(to_jsonable(data), indent=2) + "\n")
    os.replace(tmp, path)
    return path
