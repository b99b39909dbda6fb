"""VM database create: the platform's create-to-application-login against booting the same
disk with plain QEMU. Not run by default (TCG makes every sample a full emulated boot):
``python -m bench vm``.

(a) platform: ``client.db.create(..., flavor="vm.small")`` with one database ``appdb`` and
    one user ``app`` granted it -> ``client.db.get`` for the endpoint -> ``app`` logs in to
    ``appdb`` with psycopg on 127.0.0.1 and ``SELECT 1`` succeeds. Timed from just before the
    create call to that first successful query. The libvirt driver makes the root overlay, the
    data disk and the config drive, defines and starts the domain; the db.create then waits
    for the guest agent and creates ``appdb`` and ``app``. Then deleted and waited for (not
    timed).
(b) qemu: ``qemu-system-x86_64 -accel tcg`` on the image's own qcow2, kernel, initrd and
    command line, with the flavor's vCPUs and RAM (read from the API) and what the libvirt
    driver gives a domain (see ``vm_domain.build_domain_xml``): a fresh qcow2 overlay of the
    base disk as large as the flavor's disk (serial onep-root), a config drive ISO with a
    bundle whose admin is the login user (onep-config), a fresh blank data disk of the db
    default size (onep-data), virtio-rng, user networking with hostfwd on 127.0.0.1. The
    disks are made before the clock starts. Timed from just before QEMU is started until the
    admin logs in to ``postgres`` (the only database the guest makes by itself) with psycopg
    and ``SELECT 1`` succeeds. QEMU is killed and its files removed after (not timed).

Both sides poll the login every :data:`POLL_S`. One warm-up pair first (round 0, not in
the statistics; :data:`WARM_UP`): it takes the platform's KVM probe (once per process, in
the first VM create) out of the timed rounds and warms the page cache for both sides; a boot
takes some 20-30 s under TCG, so it costs about a minute. One VM at a time; every connection
goes to 127.0.0.1. The machine is shared: before each sample the bench waits (bounded) until
no other QEMU has run for a few seconds, and it names the samples another QEMU ran during.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Collection
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    LOOPBACK,
    BenchError,
    PlatformProcess,
    Sample,
    free_port,
    now,
    show,
    step_durations,
    summarise,
)
from bench.db import find_compute_create, step_medians, wait_operation
from bench.probes import wait_first_query
from oneplatform.compute.drivers.vm_domain import (
    CONFIG_VOLUME_ID,
    FIRST_DISK_SLOT,
    NIC_PCI_ADDR,
    RNG_PCI_SLOT,
    SERIAL_CONFIG,
    SERIAL_DATA,
    SERIAL_ROOT,
    domain_name,
)
from oneplatform.config import Settings
from oneplatform.dbaas.datastores import get_datastore, get_version
from oneplatform.guest.bundle import (
    AdminCredentials,
    AgentSettings,
    Bundle,
    EngineSettings,
    generate_secret,
)
from oneplatform.images.artifacts import VmImage
from oneplatform.images.builder import vm_image_if_built
from oneplatform.images.recipes import load_recipe
from oneplatform.schemas.compute import FlavorOut
from oneplatform.schemas.operations import OperationOut
from oneplatform.sdk.client import ApiError, Client

NAME = "vm-db-create"
FLAVOR = "vm.small"
DATASTORE = "postgresql"
DATABASE = "appdb"
USER = "app"
DATA_SIZE_GB = 1  # the SDK's (and API's) default size_gb of a db instance
POLL_S = 0.1  # between login attempts, on both sides
CONNECT_TIMEOUT_S = 2  # libpq's minimum
DELETE_TIMEOUT_S = 300.0
TIMEOUT_S = 300.0  # per sample, unless --timeout says otherwise
ROUNDS = 3  # unless --rounds says otherwise
WARM_UP = True  # one untimed pair first (round 0)
QEMU = "qemu-system-x86_64"
TOOLS = (QEMU, "qemu-img", "xorriso")
# Another QEMU skews the figures (2 cores, TCG): before each sample wait up to QUIET_WAIT_S
# for the machine to have run none for QUIET_S; during it, look every WATCH_S.
QUIET_WAIT_S = 900.0
QUIET_S = 3.0
WATCH_S = 0.5
LIBVIRT_POOL = "oneplatform"  # the libvirt driver's default storage pool (for the fallback)
GiB = 1024**3


# -- logging in ---------------------------------------------------------------------------------
def wait_login(
    port: int,
    user: str,
    password: str,
    dbname: str | None,
    deadline: float,
    check: Callable[[], None] = lambda: None,
    datastore: str = DATASTORE,
) -> tuple[float, dict[str, float]]:
    """Poll until ``user`` can query ``dbname`` (the engine's simplest query, with its own
    client: :func:`bench.probes.wait_first_query`). ``check`` raises to give up early."""
    return wait_first_query(datastore, port, user, password, dbname, deadline, POLL_S, check=check)


def other_qemus(markers: Collection[str] = (), own: Collection[int] = ()) -> list[int]:
    """Pids of the QEMU system emulators running on the machine, but ``own`` and those whose
    command line holds one of ``markers`` (e.g. this sample's hostfwd)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        with suppress(OSError):
            argv = (entry / "cmdline").read_bytes()
            if not os.path.basename(argv.split(b"\0", 1)[0]).startswith(b"qemu-system"):
                continue
            text = argv.decode(errors="replace")
            if not any(marker in text for marker in markers):
                found.append(int(entry.name))
    return found


def hostfwd_marker(host_port: int) -> str:
    """What the command line of a VM forwarding 127.0.0.1:``host_port`` holds."""
    return f"hostfwd=tcp:{LOOPBACK}:{host_port}-:"


class QemuWatch:
    """Notes every other QEMU running while a sample is taken (the machine has 2 cores and
    the guests are emulated: another VM skews a sample). The sample's own VM is told apart
    by a marker (its hostfwd) or its pid, added as soon as they are known."""

    def __init__(self) -> None:
        self.markers: set[str] = set()
        self.own: set[int] = set()
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="qemu-watch", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(WATCH_S):
            self.seen.update(other_qemus(set(self.markers), set(self.own)))

    def __enter__(self) -> QemuWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def wait_quiet(max_wait: float) -> list[int]:
    """Wait (at most ``max_wait`` s) until no QEMU has run for :data:`QUIET_S`; returns the
    pids still running when it gave up (empty when the machine is quiet)."""
    deadline = now() + max_wait
    quiet_since = now()
    announced = False
    while True:
        others = other_qemus()
        if others:
            quiet_since = now()
            if not announced:
                print(f"  waiting for other VMs to end (QEMU pids {others})...", flush=True)
                announced = True
        elif now() - quiet_since >= QUIET_S:
            return []
        if now() > deadline:
            return others
        time.sleep(0.5)


# -- (a) the platform -----------------------------------------------------------------------------
def measure_platform(
    platform: PlatformProcess,
    name: str,
    rnd: int,
    timeout: float,
    compute_ids: set[str],
    watch: QemuWatch,
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
        watch.markers.add(hostfwd_marker(endpoint.port))
        # Always 127.0.0.1, whatever the endpoint says (it is the bind address, loopback).
        t_login, first_seen = wait_login(endpoint.port, USER, password, DATABASE, deadline)
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
            compute_ids.add(compute.resource_id)
        delete_db(client, db_id)


def delete_db(client: Client, db_id: str, timeout: float = DELETE_TIMEOUT_S) -> None:
    """Delete through the API and wait (the domain and its volumes go with it)."""
    try:
        accepted = client.db.delete(db_id)
        client.operations.wait(accepted.operation.id, timeout=timeout, poll=0.2)
    except ApiError as exc:  # swept with virsh at the end of the run
        print(f"  warning: deleting db instance {db_id} through the API failed: {exc}")


def virsh(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-q", "-c", Settings().libvirt_uri, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def sweep_domains(compute_ids: set[str]) -> None:
    """Last resort, for what a failed API delete left: destroy and undefine each instance's
    domain and delete its volumes (all named ``onep-<id>-…``). Never raises."""
    if not compute_ids or shutil.which("virsh") is None:
        return
    try:
        volumes = virsh("vol-list", LIBVIRT_POOL).stdout.split()
        for instance_id in sorted(compute_ids):
            domain = domain_name(instance_id)
            left = [v for v in volumes if v.startswith(f"{domain}-")]
            if virsh("dominfo", domain).returncode == 0:
                print(f"  warning: domain {domain} outlived its delete: removing it", flush=True)
                virsh("destroy", domain)
                virsh("undefine", domain)
            for volume in left:
                virsh("vol-delete", "--pool", LIBVIRT_POOL, volume)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"  warning: sweeping libvirt domains failed: {exc}", flush=True)


# -- (b) plain QEMU -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawVm:
    """What the bare QEMU boot needs: the image's VM files and the flavor's size."""

    vm: VmImage
    datastore: str
    vcpus: int
    ram_mb: int
    root_bytes: int  # the overlay's virtual size: max(base, flavor disk), as the driver does
    engine_port: int
    agent_port: int
    version: str
    engine_settings: dict[str, str]


def tool(name: str, timeout: float, *args: str) -> str:
    try:
        proc = subprocess.run(
            [name, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{name} timed out after {timeout:g}s") from exc
    if proc.returncode != 0:
        raise BenchError(f"{name} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def raw_vm(flavor: FlavorOut, datastore_name: str = DATASTORE) -> RawVm:
    datastore = get_datastore(datastore_name)
    version = get_version(datastore, None)
    recipe = load_recipe(version.image)
    vm = vm_image_if_built(recipe, Settings().images_dir)
    if vm is None:
        raise BenchError(f"the VM format of {version.image} is not in {Settings().images_dir}")
    info = json.loads(tool("qemu-img", 60, "info", "--output=json", str(vm.disk)))
    return RawVm(
        vm=vm,
        datastore=datastore_name,
        vcpus=flavor.vcpus,
        ram_mb=flavor.ram_mb,
        root_bytes=max(int(info["virtual-size"]), flavor.disk_gb * GiB),
        engine_port=int(recipe.ports[datastore.engine_endpoint]),
        agent_port=int(recipe.ports["agent"]),
        version=version.version,
        engine_settings=datastore.engine_settings(flavor.vcpus, flavor.ram_mb),
    )


def make_disks(spec: RawVm, work: Path, bundle: Bundle) -> tuple[Path, Path, Path]:
    """A fresh root overlay, a config drive and a blank data disk, as the driver makes them."""
    overlay, config, data = work / "root.qcow2", work / "config.iso", work / "data.qcow2"
    tool("qemu-img", 60, "create", "-q", "-f", "qcow2", "-o", "compat=1.1",
         "-b", str(spec.vm.disk), "-F", "qcow2", str(overlay), str(spec.root_bytes))  # fmt: skip
    tool("qemu-img", 60, "create", "-q", "-f", "qcow2", "-o", "compat=1.1",
         str(data), str(DATA_SIZE_GB * GiB))  # fmt: skip
    content = work / "config"
    content.mkdir(mode=0o700)
    (content / "bundle.json").write_text(bundle.to_json(), encoding="utf-8")
    tool("xorriso", 120, "-as", "mkisofs", "-quiet", "-R", "-V", CONFIG_VOLUME_ID,
         "-o", str(config), str(content))  # fmt: skip
    shutil.rmtree(content)
    return overlay, config, data


def qemu_argv(
    spec: RawVm, disks: tuple[Path, Path, Path], console: Path, engine_port: int, agent_port: int
) -> list[str]:
    """What libvirt starts for a ``qemu`` (TCG) domain of the driver, minus libvirt's own
    plumbing (monitor, sandbox, secrets); -no-reboot so a guest panic ends the sample."""
    overlay, config, data = disks
    forwards = (
        f"hostfwd=tcp:{LOOPBACK}:{agent_port}-:{spec.agent_port},"
        f"hostfwd=tcp:{LOOPBACK}:{engine_port}-:{spec.engine_port}"
    )
    argv = [
        QEMU, "-machine", "pc,usb=off,dump-guest-core=off", "-accel", "tcg", "-cpu", "qemu64",
        "-m", str(spec.ram_mb), "-smp", f"{spec.vcpus},sockets={spec.vcpus},cores=1,threads=1",
        "-display", "none", "-no-user-config", "-nodefaults", "-rtc", "base=utc", "-no-reboot",
        "-kernel", str(spec.vm.kernel), "-initrd", str(spec.vm.initrd),
        "-append", spec.vm.cmdline,
        "-serial", f"file:{console}",
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", f"virtio-rng-pci,rng=rng0,addr={RNG_PCI_SLOT}",
        "-netdev", f"user,id=n0,{forwards}",
        "-device", f"virtio-net-pci,netdev=n0,addr={NIC_PCI_ADDR}",
    ]  # fmt: skip
    attached = ((overlay, "qcow2", SERIAL_ROOT, False), (config, "raw", SERIAL_CONFIG, True),
                (data, "qcow2", SERIAL_DATA, False))  # fmt: skip
    for index, (path, fmt, serial, read_only) in enumerate(attached):
        drive = f"file={path},format={fmt},if=none,id=d{index}" + (",readonly=on" * read_only)
        slot = f"0x{FIRST_DISK_SLOT + index:02x}"
        device = f"virtio-blk-pci,drive=d{index},serial={serial},addr={slot}"
        argv += ["-drive", drive, "-device", device]
    return argv


def measure_qemu(spec: RawVm, run_id: str, rnd: int, timeout: float, watch: QemuWatch) -> Sample:
    work = Path(tempfile.mkdtemp(prefix=f"onep-bench-vm-{run_id}-{rnd}-"))
    password = secrets.token_urlsafe(18)
    bundle = Bundle(
        instance_id=f"bench_{run_id}_{rnd}",
        datastore=spec.datastore,
        version=spec.version,
        agent=AgentSettings(secret=generate_secret(), port=spec.agent_port),
        engine=EngineSettings(port=spec.engine_port, settings=spec.engine_settings),
        admin=AdminCredentials(username=USER, password=password),
    )
    engine_port = free_port()
    agent_port = free_port()
    while agent_port == engine_port:
        agent_port = free_port()
    watch.markers.add(hostfwd_marker(engine_port))
    console, stderr = work / "console.log", work / "qemu.err"
    proc: subprocess.Popen[bytes] | None = None
    try:
        argv = qemu_argv(spec, make_disks(spec, work, bundle), console, engine_port, agent_port)
        with stderr.open("wb") as err:
            t0 = now()
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
        started = proc

        def alive() -> None:
            if started.poll() is not None:
                err_text = stderr.read_text(errors="replace")[-2000:]
                raise BenchError(f"QEMU exited {started.returncode} during the boot: {err_text}")

        t_login, first_seen = wait_login(
            engine_port, USER, password, None, t0 + timeout, alive, datastore=spec.datastore
        )
        phases = {f"first_{k}": t - t0 for k, t in sorted(first_seen.items(), key=lambda i: i[1])}
        return Sample("qemu", rnd, t_login - t0, phases)
    except BenchError as exc:
        if not console.exists():
            raise
        tail = console.read_text(errors="replace")[-3000:]
        raise BenchError(f"{exc}\n--- console (end):\n{tail}") from exc
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


# -- the benchmark --------------------------------------------------------------------------------
def run(platform: PlatformProcess, rounds: int, timeout: float) -> dict[str, Any]:
    """A warm-up pair (if :data:`WARM_UP`), then ``rounds`` rounds of platform, qemu
    alternately."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise BenchError(f"{NAME} needs {', '.join(missing)} (run scripts/setup.sh)")
    client = platform.client
    flavor = next((f for f in client.flavors.list() if f.name == FLAVOR), None)
    if flavor is None:
        raise BenchError(
            f"the platform has no flavor {FLAVOR!r}: is libvirt running? (onep up's log says "
            "why the VM pool was skipped)"
        )
    spec = raw_vm(flavor)
    run_id = uuid.uuid4().hex[:8]
    print(
        f"{NAME}: {spec.vm.disk.name}, flavor {FLAVOR} ({spec.vcpus} vCPU, {spec.ram_mb} MB, "
        f"root {spec.root_bytes / GiB:g} GiB, data {DATA_SIZE_GB} GiB), qemu -accel tcg, "
        f"{rounds} round(s), {'one warm-up' if WARM_UP else 'no warm-up'}, "
        f"{timeout:g}s per sample",
        flush=True,
    )
    instances: list[dict[str, Any]] = []
    compute_ids: set[str] = set()
    contended: list[dict[str, Any]] = []

    def platform_sample(rnd: int, watch: QemuWatch) -> Sample:
        name = f"bench-vm-{run_id}-{rnd}"
        sample, info = measure_platform(platform, name, rnd, timeout, compute_ids, watch)
        instances.append({"round": rnd, **info})
        return sample

    def qemu_sample(rnd: int, watch: QemuWatch) -> Sample:
        return measure_qemu(spec, run_id, rnd, timeout, watch)

    measures: list[Callable[[int, QemuWatch], Sample]] = [platform_sample, qemu_sample]
    samples: list[Sample] = []
    try:
        for rnd in range(0 if WARM_UP else 1, rounds + 1):  # round 0: the warm-up
            for measure in measures:
                running = wait_quiet(QUIET_WAIT_S)
                if running:
                    print(f"  warning: gave up waiting for QEMU pids {running}", flush=True)
                with QemuWatch() as watch:
                    sample = measure(rnd, watch)
                show(sample)
                samples.append(sample)
                if watch.seen:
                    pids = sorted(watch.seen)
                    print(f"  {'':<9} warning: other QEMU ran during it: {pids}", flush=True)
                    contended.append({"round": rnd, "label": sample.label, "pids": pids})
    finally:
        sweep_domains(compute_ids)

    stats, ratio = summarise(NAME, samples, ("platform", "qemu"), rounds)
    steps = step_medians([s for s in samples if s.label == "platform" and s.round > 0])
    if steps:
        print("  platform phases and server steps, medians (seconds):")
        for key, value in steps.items():
            print(f"    {key:<40} {value:7.3f}")
    return {
        "benchmark": NAME,
        "image": spec.vm.disk.name,
        "flavor": FLAVOR,
        "vcpus": spec.vcpus,
        "ram_mb": spec.ram_mb,
        "root_gb": spec.root_bytes / GiB,
        "data_gb": DATA_SIZE_GB,
        "accelerator": "tcg",
        "rounds": rounds,
        "warm_up": WARM_UP,
        "timeout_seconds": timeout,
        "poll_seconds": {"login": POLL_S},
        "measures": {
            "platform": f"db.create ({FLAVOR}) -> {USER} logs in to {DATABASE}, SELECT 1",
            "qemu": f"start {QEMU} on fresh disks -> admin {USER} logs in to postgres, SELECT 1",
        },
        "samples": samples,
        "platform_instances": instances,
        "quiet_wait": {"max_seconds": QUIET_WAIT_S, "quiet_seconds": QUIET_S},
        "contended_samples": contended,
        "stats": stats,
        "platform_phase_medians": steps,
        "ratio_median_platform_over_qemu": ratio,
    }
