"""The VM format of the real postgresql-15 image, booted with plain QEMU (no libvirt).

The image is built as test_image_build.py builds it (cached in ``ONEP_TEST_IMAGE_CACHE``
or the platform's own image cache), then exported to a qcow2 root disk with its kernel and
initrd. The VM gets the disk contract the libvirt driver uses: a copy-on-write overlay of
the root disk (serial onep-root), a config drive ISO with bundle.json (onep-config) and a
blank data disk (onep-data); QEMU user networking forwards 127.0.0.1 ports to PostgreSQL
and the agent. TCG only, one VM at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from oneplatform.config import Settings
from oneplatform.dbaas.agent_client import AgentClient
from oneplatform.errors import BackendError, BackendUnavailable
from oneplatform.guest.bundle import (
    AdminCredentials,
    AgentSettings,
    Bundle,
    EngineSettings,
    generate_password,
    generate_secret,
)
from oneplatform.images.artifacts import VmImage
from oneplatform.images.builder import (
    CONFIG_LABEL,
    CONFIG_SERIAL,
    DATA_SERIAL,
    ROOT_SERIAL,
    VM_CMDLINE,
    artifact_for,
    build_vm_image,
    rootfs_path,
    vm_image_path,
)
from oneplatform.images.recipes import Recipe, load_recipe
from tests.integration.conftest import find_free_port, hmp_command, require_or_fail

pytestmark = pytest.mark.integration

READY_TIMEOUT = 120.0
POWEROFF_TIMEOUT = 60.0
QEMU = "qemu-system-x86_64"
TOOLS = (QEMU, "qemu-img", "xorriso", "mkfs.ext4", "mmdebstrap", "tar")
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=f"{os.environ.get('PATH', os.defpath)}:{SBIN}")


def _run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    return proc


@pytest.fixture(scope="module")
def cache_dir() -> Path:
    return Path(os.environ.get("ONEP_TEST_IMAGE_CACHE") or Settings().images_dir)


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    return load_recipe("postgresql-15")


@pytest.fixture(scope="module")
def vm_image(recipe: Recipe, cache_dir: Path) -> VmImage:
    for tool in TOOLS:
        require_or_fail(_which(tool), f"{tool} is not installed (run scripts/setup.sh)")
    require_or_fail(os.geteuid() == 0, "building a VM image needs root")
    started = time.monotonic()
    lines: list[str] = []
    vm = build_vm_image(recipe, cache_dir, progress=lines.append)
    elapsed = time.monotonic() - started
    sizes = ", ".join(
        f"{path.suffix[1:]} {path.stat().st_size / 2**20:.1f} MiB"
        for path in (rootfs_path(recipe, cache_dir), vm.disk, vm.kernel, vm.initrd)
        if path.exists()
    )
    print(f"\nbuild_vm_image: {elapsed:.1f} s ({len(lines)} progress lines); {sizes}")
    for line in lines:
        if line.startswith("vm: "):
            print(f"  {line}")
    return vm


def test_vm_image_is_cached_beside_the_rootfs(
    recipe: Recipe, cache_dir: Path, vm_image: VmImage
) -> None:
    stem = rootfs_path(recipe, cache_dir).stem
    assert vm_image == vm_image_path(recipe, cache_dir)
    assert vm_image.disk.name == f"{stem}.qcow2"
    assert vm_image.kernel.name == f"{stem}.vmlinuz"
    assert vm_image.initrd.name == f"{stem}.initrd"
    assert vm_image.cmdline == VM_CMDLINE
    assert artifact_for(recipe, cache_dir).vm == vm_image
    info = json.loads(_run("qemu-img", "info", "--output=json", str(vm_image.disk)).stdout)
    assert info["format"] == "qcow2"
    assert "backing-filename" not in info
    with vm_image.kernel.open("rb") as handle:
        header = handle.read(0x206)
    assert header[0x202:0x206] == b"HdrS"  # a bzImage the x86 boot protocol can load
    # A second call finds everything in the cache.
    before = vm_image.disk.stat().st_mtime_ns
    started = time.monotonic()
    assert build_vm_image(recipe, cache_dir) == vm_image
    assert time.monotonic() - started < 5
    assert vm_image.disk.stat().st_mtime_ns == before
    assert not list(cache_dir.glob(f".{stem}.*.vm-build"))


# --- booting it --------------------------------------------------------------------------


@dataclass
class Boot:
    proc: subprocess.Popen[bytes]
    console: Path
    monitor: Path
    stderr: Path
    started: float


class Machine:
    """One VM's disks and forwarded ports; boots run one after the other."""

    def __init__(self, work: Path, vm: VmImage, bundle: Bundle) -> None:
        self.work = work
        self.vm = vm
        self.bundle = bundle
        self.pg_port = find_free_port()
        self.agent_port = find_free_port()
        while self.agent_port == self.pg_port:
            self.agent_port = find_free_port()
        self.overlay = work / "root-overlay.qcow2"
        self.data = work / "data.qcow2"
        self.config = work / "config.iso"
        self.boots: list[Boot] = []

    def make_disks(self) -> None:
        # A larger overlay than the base: the guest grows its root filesystem to fit.
        _run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.vm.disk), "-F", "qcow2",
             str(self.overlay), "2G")  # fmt: skip
        _run("qemu-img", "create", "-q", "-f", "qcow2", str(self.data), "2G")
        source = self.work / "config"
        source.mkdir(mode=0o700)
        (source / "bundle.json").write_text(self.bundle.to_json(), encoding="utf-8")
        _run("xorriso", "-as", "mkisofs", "-quiet", "-V", CONFIG_LABEL, "-o", str(self.config),
             str(source))  # fmt: skip
        shutil.rmtree(source)

    def argv(self, console: Path, monitor: Path) -> list[str]:
        qemu = _which(QEMU)
        assert qemu is not None
        forwards = (
            f"hostfwd=tcp:127.0.0.1:{self.pg_port}-:5432,"
            f"hostfwd=tcp:127.0.0.1:{self.agent_port}-:8471"
        )
        disks = [
            (self.overlay, "qcow2", ROOT_SERIAL, False),
            (self.config, "raw", CONFIG_SERIAL, True),
            (self.data, "qcow2", DATA_SERIAL, False),
        ]
        argv = [
            qemu, "-accel", "tcg", "-m", "1024", "-smp", "1", "-nographic", "-no-reboot",
            "-kernel", str(self.vm.kernel), "-initrd", str(self.vm.initrd),
            "-append", self.vm.cmdline,
            "-netdev", f"user,id=n0,{forwards}",
            "-device", "virtio-net-pci,netdev=n0,addr=0x10",
            "-device", "virtio-rng-pci",  # the guest's random pool is ready at once
            "-serial", f"file:{console}",
            "-monitor", f"unix:{monitor},server=on,wait=off",
        ]  # fmt: skip
        for index, (path, fmt, serial, read_only) in enumerate(disks):
            drive = f"file={path},format={fmt},if=none,id=d{index}"
            argv += ["-drive", drive + (",readonly=on" if read_only else "")]
            argv += ["-device", f"virtio-blk-pci,drive=d{index},serial={serial}"]
        return argv

    def boot(self) -> Boot:
        number = len(self.boots) + 1
        console = self.work / f"console-{number}.log"
        monitor = self.work / f"monitor-{number}.sock"
        stderr = self.work / f"qemu-{number}.err"
        with stderr.open("wb") as err:
            proc = subprocess.Popen(
                self.argv(console, monitor),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        boot = Boot(proc, console, monitor, stderr, time.monotonic())
        self.boots.append(boot)
        return boot

    def kill(self) -> None:
        for boot in self.boots:
            if boot.proc.poll() is None:
                boot.proc.kill()
                boot.proc.wait(30)

    def agent(self) -> AgentClient:
        return AgentClient(
            "127.0.0.1",
            self.agent_port,
            self.bundle.instance_id,
            self.bundle.agent.secret,
            timeout=5,
        )

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.pg_port,
            user=self.bundle.admin.username,
            password=self.bundle.admin.password,
            dbname="postgres",
            connect_timeout=5,
        )


def console_text(boot: Boot) -> str:
    return (
        boot.console.read_text(encoding="utf-8", errors="replace") if boot.console.exists() else ""
    )


def fail_with_console(boot: Boot, message: str) -> None:
    stderr = boot.stderr.read_text(errors="replace") if boot.stderr.exists() else ""
    console = console_text(boot)[-6000:]
    pytest.fail(f"{message}\n--- qemu stderr:\n{stderr}\n--- console (end):\n{console}")


def wait_ready(machine: Machine, boot: Boot) -> tuple[float, float]:
    """Seconds from QEMU's start until (the agent says ready, psycopg logs in)."""
    deadline = boot.started + READY_TIMEOUT
    agent = machine.agent()
    agent_ready = sql_ready = 0.0
    last = "nothing yet"
    while time.monotonic() < deadline and not (agent_ready and sql_ready):
        if boot.proc.poll() is not None:
            fail_with_console(boot, f"QEMU exited with code {boot.proc.returncode} during boot")
        if not agent_ready:
            try:
                health = agent.health()
                last = f"agent: {health.engine}: {health.detail}"
                if health.ready:
                    agent_ready = time.monotonic() - boot.started
            except (BackendUnavailable, BackendError) as exc:
                last = f"agent: {exc}"
        if agent_ready and not sql_ready:
            try:
                with machine.connect() as conn:
                    conn.execute("SELECT 1")
                sql_ready = time.monotonic() - boot.started
            except psycopg.OperationalError as exc:
                last = f"psycopg: {exc}"
        if not (agent_ready and sql_ready):
            time.sleep(0.25)
    if not (agent_ready and sql_ready):
        fail_with_console(boot, f"not ready {READY_TIMEOUT:.0f} s after QEMU started ({last})")
    return agent_ready, sql_ready


def wait_powered_off(boot: Boot) -> float:
    """Seconds until QEMU exits by itself (the guest powered off); fails on a timeout."""
    started = time.monotonic()
    try:
        code = boot.proc.wait(POWEROFF_TIMEOUT)
    except subprocess.TimeoutExpired:
        fail_with_console(boot, f"the guest did not power off within {POWEROFF_TIMEOUT:.0f} s")
        raise
    if code != 0:
        fail_with_console(boot, f"QEMU exited with code {code}")
    return time.monotonic() - started


@pytest.fixture
def machine(vm_image: VmImage) -> Iterator[Machine]:
    require_or_fail(_which(QEMU), f"{QEMU} is not installed (run scripts/setup.sh)")
    work = Path(tempfile.mkdtemp(prefix="onep-vm-test-"))
    bundle = Bundle(
        instance_id=f"vm-test-{uuid.uuid4().hex[:12]}",
        datastore="postgresql",
        version="15",
        agent=AgentSettings(secret=generate_secret(), port=8471),
        engine=EngineSettings(port=5432, settings={"max_connections": 30}),
        admin=AdminCredentials(username="onep_admin", password=generate_password()),
    )
    vm = Machine(work, vm_image, bundle)
    try:
        vm.make_disks()
        yield vm
    finally:
        vm.kill()
        shutil.rmtree(work, ignore_errors=True)


def test_vm_boots_serves_and_survives_a_clean_power_off(machine: Machine) -> None:
    bundle = machine.bundle
    # First boot: a blank data disk, so the guest makes its filesystem and runs initdb.
    first = machine.boot()
    agent_ready, sql_ready = wait_ready(machine, first)
    print(
        f"\nboot 1 (initdb): agent ready {agent_ready:.1f} s, "
        f"PostgreSQL login {sql_ready:.1f} s after QEMU started"
    )
    health = machine.agent().health()
    assert health.ready and health.engine == "running"
    assert health.instance_id == bundle.instance_id
    with machine.connect() as conn:
        conn.execute("CREATE TABLE survives (note text)")
        conn.execute("INSERT INTO survives VALUES ('written before a clean power-off')")
        conn.commit()
        setting = conn.execute("SHOW max_connections").fetchone()
        assert setting == ("30",)  # the bundle's engine settings were applied
    # Ctrl-Alt-Del: the agent stops PostgreSQL, unmounts the data disk and powers off.
    hmp_command(first.monitor, "sendkey ctrl-alt-delete")
    took = wait_powered_off(first)
    print(f"boot 1: powered off {took:.1f} s after Ctrl-Alt-Del")
    log1 = console_text(first)
    assert "making an ext4 filesystem on the blank data disk" in log1
    assert "initialising a new PostgreSQL 15 cluster" in log1
    assert "received SIGINT: shutting down" in log1
    assert "unmounted /var/lib/oneplatform" in log1
    assert "reboot: Power down" in log1

    # Second boot of the same overlay and data disk: no initdb, the row is there, and
    # PostgreSQL says its last shutdown was clean.
    second = machine.boot()
    agent_ready, sql_ready = wait_ready(machine, second)
    print(
        f"boot 2 (existing data): agent ready {agent_ready:.1f} s, "
        f"PostgreSQL login {sql_ready:.1f} s after QEMU started"
    )
    with machine.connect() as conn:
        rows = conn.execute("SELECT note FROM survives").fetchall()
    assert rows == [("written before a clean power-off",)]
    # The ACPI power button (libvirt's default shutdown) is a clean stop too.
    hmp_command(second.monitor, "system_powerdown")
    took = wait_powered_off(second)
    print(f"boot 2: powered off {took:.1f} s after the ACPI power button")
    log2 = console_text(second)
    assert "making an ext4 filesystem" not in log2
    assert "initialising a new PostgreSQL" not in log2
    assert "database system was shut down at" in log2
    assert "received the power button: shutting down" in log2
    assert "unmounted /var/lib/oneplatform" in log2
    assert "reboot: Power down" in log2

    for text in (log1, log2):
        assert bundle.admin.password not in text
        assert bundle.agent.secret not in text
