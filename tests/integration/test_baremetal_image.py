"""The bare-metal formats for real: the whole-disk image boots from its own disk, and the
deploy ISO's agent writes it to a blank disk, all with plain QEMU (no Redfish, no libvirt).

(a) The built image, copied, with the config partition filled and the data partition
    entry added on the host the way the deploy agent does it, boots like a node: no disk
    serials, user networking; the agent's signed health turns ready and the admin logs in.
(b) The deploy flow: a blank sparse disk, the per-deploy ISO as CD, and a test HTTP
    server on 127.0.0.1 (the node reaches it as 10.0.2.2) serving the manifest, image and
    bundle and taking the status reports. The node reports ok with the image's sha256 and
    powers off by itself; then the same disk boots without the CD and serves PostgreSQL.

TCG only, one VM at a time. Timings are printed (run with -s to see them).
"""

from __future__ import annotations

import hashlib
import http.server
import os
import secrets
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from oneplatform.baremetal.deploy_agent import DeployManifest, DeployStatus, render_clean_manifest
from oneplatform.baremetal.deploy_iso import build_deploy_iso
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
from oneplatform.images.builder import rootfs_path
from oneplatform.images.recipes import Recipe, load_recipe
from oneplatform.images.wholedisk import (
    DATA_PARTITION,
    MBR_ENTRY_SIZE,
    MBR_TABLE_OFFSET,
    SECTOR,
    TYPE_LINUX,
    DiskImage,
    MiB,
    block_map,
    build_disk_image,
    data_partition,
    disk_image_path,
    mbr_entry,
    stream_blocks,
)
from tests.integration.conftest import find_free_port, hmp_command, require_or_fail

pytestmark = pytest.mark.integration

QEMU = "qemu-system-x86_64"
TOOLS = (QEMU, "xorriso", "mkfs.ext4", "mkfs.vfat", "extlinux", "mmdebstrap", "tar", "mcopy")
SYSLINUX_FILES = (
    ("/usr/lib/syslinux/mbr/mbr.bin", "syslinux-common"),
    ("/usr/lib/syslinux/modules/bios/ldlinux.c32", "syslinux-common"),
    ("/usr/lib/ISOLINUX/isolinux.bin", "isolinux"),
)
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
READY_TIMEOUT = 180.0
DEPLOY_TIMEOUT = 900.0  # TCG: ~30 MB/s to write, ~10 MB/s to hash the image read back
POWEROFF_TIMEOUT = 60.0
NODE_DISK_BYTES = 3 * 1024**3


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
def disk_image(recipe: Recipe, cache_dir: Path) -> DiskImage:
    for tool in TOOLS:
        require_or_fail(_which(tool), f"{tool} is not installed (run scripts/setup.sh)")
    for path, package in SYSLINUX_FILES:
        require_or_fail(Path(path).is_file(), f"{path} is missing (Debian package {package})")
    require_or_fail(os.geteuid() == 0, "building a disk image needs root")
    started = time.monotonic()
    lines: list[str] = []
    image = build_disk_image(recipe, cache_dir, progress=lines.append)
    elapsed = time.monotonic() - started
    allocated = image.path.stat().st_blocks * 512
    print(
        f"\nbuild_disk_image: {elapsed:.1f} s; {image.size / MiB:.0f} MiB raw "
        f"({allocated / MiB:.0f} MiB allocated)"
    )
    for line in lines:
        if line.startswith("disk: "):
            print(f"  {line}")
    return image


@pytest.fixture
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="onep-bm-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def bundle() -> Bundle:
    return Bundle(
        instance_id=f"bm-test-{uuid.uuid4().hex[:12]}",
        datastore="postgresql",
        version="15",
        agent=AgentSettings(secret=generate_secret(), port=8471),
        engine=EngineSettings(port=5432, settings={"max_connections": 30}),
        admin=AdminCredentials(username="onep_admin", password=generate_password()),
    )


def test_disk_image_layout_and_cache(
    recipe: Recipe, cache_dir: Path, disk_image: DiskImage
) -> None:
    stem = rootfs_path(recipe, cache_dir).stem
    assert disk_image.path == disk_image_path(recipe, cache_dir)
    assert disk_image.path.name == f"{stem}.disk.raw"
    assert disk_image.size == disk_image.path.stat().st_size
    assert disk_image.path.stat().st_blocks * 512 < disk_image.size  # sparse
    with disk_image.path.open("rb") as handle:
        sector0 = handle.read(SECTOR)
        handle.seek(MiB + 1024 + 0x78)  # ext4 superblock: s_volume_name
        root_label = handle.read(16).rstrip(b"\0")
    assert sector0[:440] == Path(SYSLINUX_FILES[0][0]).read_bytes()[:440]
    assert sector0[510:] == b"\x55\xaa"
    entries = [sector0[446 + 16 * i : 462 + 16 * i] for i in range(4)]
    assert [e[0] for e in entries] == [0x80, 0, 0, 0]  # p1 active, p3/p4 empty
    assert [e[4] for e in entries] == [0x83, 0x0E, 0, 0]
    starts = [struct.unpack_from("<II", e, 8) for e in entries[:2]]
    assert starts[0][0] == 2048
    assert starts[1][0] == starts[0][0] + starts[0][1]
    assert (starts[1][0] + starts[1][1]) * SECTOR == disk_image.size
    assert root_label == b"onep-root"
    # The recorded sha256 is the file's.
    digest = hashlib.sha256()
    with disk_image.path.open("rb") as handle:
        while chunk := handle.read(8 * MiB):
            digest.update(chunk)
    assert digest.hexdigest() == disk_image.sha256
    # A second call finds it in the cache.
    before = disk_image.path.stat().st_mtime_ns
    started = time.monotonic()
    assert build_disk_image(recipe, cache_dir) == disk_image
    assert time.monotonic() - started < 5
    assert disk_image.path.stat().st_mtime_ns == before
    assert not list(cache_dir.glob(f".{stem}.*.disk-build"))


# --- a node: plain QEMU, a virtio disk without a serial, user networking ------------------


@dataclass
class Node:
    work: Path
    disk: Path
    bundle: Bundle
    pg_port: int = field(default_factory=find_free_port)
    agent_port: int = field(default_factory=find_free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    started: float = 0.0
    console: Path = Path()

    def boot(self, name: str, *, cdrom: Path | None = None) -> subprocess.Popen[bytes]:
        qemu = _which(QEMU)
        assert qemu is not None
        while self.agent_port == self.pg_port:
            self.agent_port = find_free_port()
        self.console = self.work / f"console-{name}.log"
        forwards = (
            f"hostfwd=tcp:127.0.0.1:{self.pg_port}-:5432,"
            f"hostfwd=tcp:127.0.0.1:{self.agent_port}-:8471"
        )
        argv = [
            qemu, "-accel", "tcg", "-m", "1024", "-smp", "1", "-nographic", "-no-reboot",
            "-drive", f"file={self.disk},format=raw,if=virtio,discard=unmap,detect-zeroes=unmap",
            "-netdev", f"user,id=n0,{forwards}",
            "-device", "virtio-net-pci,netdev=n0,addr=0x10",
            "-device", "virtio-rng-pci",
            "-serial", f"file:{self.console}",
            "-monitor", f"unix:{self.work / f'monitor-{name}.sock'},server=on,wait=off",
        ]  # fmt: skip
        argv += ["-cdrom", str(cdrom), "-boot", "d"] if cdrom else ["-boot", "c"]
        with (self.work / f"qemu-{name}.err").open("wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        self.procs.append(proc)
        self.started = time.monotonic()
        return proc

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n--- console (end):\n{self.console_text()[-6000:]}")

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)

    def monitor(self, name: str, command: str) -> None:
        hmp_command(self.work / f"monitor-{name}.sock", command)

    def wait_exit(self, proc: subprocess.Popen[bytes], timeout: float) -> float:
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"QEMU did not exit within {timeout:.0f} s")
            raise
        if code != 0:
            self.fail(f"QEMU exited with code {code}")
        return time.monotonic() - self.started

    def wait_ready(self, proc: subprocess.Popen[bytes]) -> tuple[float, float]:
        """Seconds from QEMU's start until (the agent says ready, psycopg logs in)."""
        agent = AgentClient(
            "127.0.0.1", self.agent_port, self.bundle.instance_id, self.bundle.agent.secret,
            timeout=5,
        )  # fmt: skip
        agent_ready = sql_ready = 0.0
        last = "nothing yet"
        while time.monotonic() < self.started + READY_TIMEOUT and not sql_ready:
            if proc.poll() is not None:
                self.fail(f"QEMU exited with code {proc.returncode} during boot")
            try:
                if not agent_ready:
                    health = agent.health()
                    last = f"agent: {health.engine}: {health.detail}"
                    if health.ready:
                        agent_ready = time.monotonic() - self.started
                if agent_ready:
                    with self.connect() as conn:
                        conn.execute("SELECT 1")
                    sql_ready = time.monotonic() - self.started
            except (BackendUnavailable, BackendError, psycopg.OperationalError) as exc:
                last = str(exc)
            if not sql_ready:
                time.sleep(0.25)
        if not sql_ready:
            self.fail(f"not ready {READY_TIMEOUT:.0f} s after QEMU started ({last})")
        return agent_ready, sql_ready

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.pg_port,
            user=self.bundle.admin.username,
            password=self.bundle.admin.password,
            dbname="postgres",
            connect_timeout=5,
        )


@pytest.fixture
def node(work: Path, bundle: Bundle) -> Iterator[Node]:
    require_or_fail(_which(QEMU), f"{QEMU} is not installed (run scripts/setup.sh)")
    made = Node(work, work / "node-disk.raw", bundle)
    try:
        yield made
    finally:
        made.kill()


def boot_from_disk_and_check(node: Node, label: str) -> None:
    """Boot the node's disk (no CD): the agent is ready, the admin logs in, the data
    partition was made at first boot; then a clean ACPI power-off."""
    proc = node.boot(label)
    agent_ready, sql_ready = node.wait_ready(proc)
    print(
        f"{label}: agent ready {agent_ready:.1f} s, PostgreSQL login {sql_ready:.1f} s "
        f"after QEMU started"
    )
    with node.connect() as conn:
        assert conn.execute("SHOW max_connections").fetchone() == ("30",)
        data_dir = conn.execute("SHOW data_directory").fetchone()
    assert data_dir == ("/var/lib/oneplatform/pgdata",)
    pressed = time.monotonic() - node.started
    node.monitor(label, "system_powerdown")
    took = node.wait_exit(proc, POWEROFF_TIMEOUT) - pressed
    print(f"{label}: powered off within {took:.1f} s of the ACPI power button")
    log = node.console_text()
    for expected in (
        "bare metal: the root filesystem is on vda",
        "config bundle copied from /dev/vda2",
        "making an ext4 filesystem on the blank data disk /dev/vda3",
        "data disk /dev/vda3 mounted at /var/lib/oneplatform",
        "unmounted /var/lib/oneplatform",
    ):
        if expected not in log:
            node.fail(f"the console does not say {expected!r}")
    assert node.bundle.admin.password not in log
    assert node.bundle.agent.secret not in log


# --- (a) the image boots from its own disk ---------------------------------------------------


def write_config_and_data_partitions(disk: Path, image_size: int, bundle: Bundle) -> None:
    """What the deploy agent does after writing the image, done on the host."""
    disk_sectors = disk.stat().st_size // SECTOR
    span = data_partition(image_size, disk_sectors)
    offset = MBR_TABLE_OFFSET + (DATA_PARTITION - 1) * MBR_ENTRY_SIZE
    with disk.open("r+b") as handle:
        handle.seek(offset)
        handle.write(mbr_entry(span, TYPE_LINUX))
        handle.seek(446 + 16 + 8)  # p2: start and size
        (config_start,) = struct.unpack("<I", handle.read(4))
    # mtools: the host's kernel need not have vfat (this one does not).
    source = disk.parent / "bundle.json"
    source.write_text(bundle.to_json(), encoding="utf-8")
    _run("mcopy", "-i", f"{disk}@@{config_start * SECTOR}", str(source), "::bundle.json")
    source.unlink()


@pytest.mark.timeout(1200)
def test_disk_image_boots_from_its_own_disk(
    disk_image: DiskImage, node: Node, bundle: Bundle
) -> None:
    _run("cp", "--sparse=always", str(disk_image.path), str(node.disk))
    os.truncate(node.disk, NODE_DISK_BYTES)
    write_config_and_data_partitions(node.disk, disk_image.size, bundle)
    boot_from_disk_and_check(node, "disk-boot")


# --- (b) the deploy flow -----------------------------------------------------------------------


class DeployServer:
    """The platform's side of one deploy, on 127.0.0.1: manifest, image, bundle, status."""

    def __init__(
        self, image: DiskImage | None, bundle: bytes, stream_sha256: str | None = None
    ) -> None:
        self.token = secrets.token_urlsafe(24)
        self.image = image
        self.bmap = block_map(image) if image is not None else None
        # What the manifest claims the stream's sha256 is (a wrong one: a corrupt image).
        self.stream_sha256 = stream_sha256 or (self.bmap.stream_sha256 if self.bmap else None)
        self.bundle = bundle
        self.statuses: list[tuple[float, DeployStatus]] = []
        self.requests: list[tuple[float, str, int]] = []
        self.image_served: tuple[float, float] = (0.0, 0.0)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def guest_url(self) -> str:
        return f"http://10.0.2.2:{self.port}/deploy/{self.token}"

    def manifest_text(self) -> str:
        return self.manifest().render()

    def manifest(self) -> DeployManifest:
        assert self.image is not None and self.bmap is not None and self.stream_sha256
        return DeployManifest(
            image_url=f"{self.guest_url}/image",
            image_sha256=self.image.sha256,
            image_size=self.image.size,
            image_map=self.bmap.render_runs(),
            stream_sha256=self.stream_sha256,
            config_url=f"{self.guest_url}/config",
            config_sha256=hashlib.sha256(self.bundle).hexdigest(),
        )

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        deploy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                prefix = f"/deploy/{deploy.token}/"
                name = self.path.removeprefix(prefix) if self.path.startswith(prefix) else ""
                deploy.requests.append((time.monotonic(), f"GET {name or '?'}", 0))
                if name == "manifest":
                    self._send(deploy.manifest_text().encode(), "text/plain")
                elif name == "config":
                    self._send(deploy.bundle, "application/json")
                elif name == "image" and deploy.image is not None:
                    self._send_image(deploy.image)
                else:
                    self.send_error(404)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.path != f"/deploy/{deploy.token}/status":
                    self.send_error(404)
                    return
                deploy.statuses.append((time.monotonic(), DeployStatus.parse(body)))
                self._send(b"ok\n", "text/plain")

            def _send(self, body: bytes, kind: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _send_image(self, image: DiskImage) -> None:
                assert deploy.bmap is not None
                started = time.monotonic()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(deploy.bmap.stream_bytes))
                self.end_headers()
                for chunk in stream_blocks(image, deploy.bmap):
                    self.wfile.write(chunk)
                deploy.image_served = (started, time.monotonic())

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def __enter__(self) -> DeployServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.timeout(2400)
def test_deploy_by_iso_then_boot_from_disk(
    recipe: Recipe, cache_dir: Path, disk_image: DiskImage, node: Node, bundle: Bundle
) -> None:
    with node.disk.open("wb") as handle:
        handle.truncate(NODE_DISK_BYTES)  # blank and sparse
    with DeployServer(disk_image, bundle.to_json().encode()) as server:
        started = time.monotonic()
        iso = build_deploy_iso(
            cache_dir,
            server.guest_url,
            node.work / "deploy.iso",
            kernel_source=rootfs_path(recipe, cache_dir),
        )
        print(f"\nbuild_deploy_iso: {time.monotonic() - started:.2f} s, "
              f"{iso.stat().st_size / MiB:.1f} MiB")  # fmt: skip
        assert iso.stat().st_mode & 0o777 == 0o600
        # Only the token opens the deploy.
        wrong = f"http://127.0.0.1:{server.port}/deploy/not-the-token/manifest"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(wrong, timeout=5)
        assert refused.value.code == 404

        proc = node.boot("deploy", cdrom=iso)
        took = node.wait_exit(proc, DEPLOY_TIMEOUT)  # the agent powers the node off
        assert server.statuses, "the deploy agent never reported"
        final = server.statuses[-1][1]
        if final.status != "ok":
            node.fail(f"the deploy failed: {final}")
        assert server.bmap is not None
        assert final.sha256 == server.bmap.stream_sha256
        assert final.disk == "/dev/vda"
        assert final.extra.get("written_mib") == str(server.bmap.stream_bytes // MiB)
        stages = [status.stage for _, status in server.statuses]
        assert stages == ["started", "writing", "verifying", "partitioning", "config", "done"]
        first_report = server.statuses[0][0] - node.started
        served = server.image_served[1] - server.image_served[0]
        print(
            f"deploy: agent's first report {first_report:.1f} s after QEMU started "
            f"(guest uptime {server.statuses[0][1].extra.get('uptime_s')} s); image "
            f"{disk_image.size / MiB:.0f} MiB ({final.extra.get('written_mib')} MiB mapped) "
            f"written in {final.extra.get('write_s')} s "
            f"(served in {served:.1f} s), verified in {final.extra.get('verify_s')} s; "
            f"agent total {final.extra.get('deploy_s')} s; QEMU exited {took:.1f} s after start"
        )
    log = node.console_text()
    assert "onep-deploy" in log
    assert server.token not in log  # the deploy URL is never printed (quiet kernel too)
    # The partition table now has the data partition the agent added.
    with node.disk.open("rb") as handle:
        handle.seek(MBR_TABLE_OFFSET + (DATA_PARTITION - 1) * MBR_ENTRY_SIZE)
        entry = handle.read(MBR_ENTRY_SIZE)
    span = data_partition(disk_image.size, NODE_DISK_BYTES // SECTOR)
    assert entry == mbr_entry(span, TYPE_LINUX)
    # Only the mapped blocks were written, on a blank disk: the root partition is the
    # image's, byte for byte (the MBR and the config partition the agent changed).
    assert same_root_partition(disk_image.path, node.disk)
    print(f"node disk: {node.disk.stat().st_blocks * 512 / MiB:.0f} MiB allocated")

    boot_from_disk_and_check(node, "deployed-disk-boot")
    clean_and_check(node, cache_dir, kernel_source=rootfs_path(recipe, cache_dir))


def same_root_partition(image: Path, disk: Path) -> bool:
    """Whether partition 1 (the root filesystem) holds the same bytes on both."""
    with image.open("rb") as handle:
        handle.seek(MBR_TABLE_OFFSET)
        start, sectors = struct.unpack("<II", handle.read(MBR_ENTRY_SIZE)[8:16])
    digests = []
    for path in (image, disk):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            handle.seek(start * SECTOR)
            left = sectors * SECTOR
            while left and (chunk := handle.read(min(left, 16 * MiB))):
                digest.update(chunk)
                left -= len(chunk)
        digests.append(digest.hexdigest())
    return digests[0] == digests[1]


class CleanServer(DeployServer):
    """A clean: the manifest says mode=clean; nothing else is served."""

    def manifest_text(self) -> str:
        return render_clean_manifest()


def clean_and_check(node: Node, cache_dir: Path, kernel_source: Path) -> None:
    """The ramdisk in clean mode writes zeros over the whole disk, saying how far it got."""
    with CleanServer(None, b"") as server:
        iso = build_deploy_iso(
            cache_dir, server.guest_url, node.work / "clean.iso", kernel_source=kernel_source
        )
        proc = node.boot("clean", cdrom=iso)
        took = node.wait_exit(proc, 300)
    final = server.statuses[-1][1] if server.statuses else None
    if final is None or final.status != "ok":
        node.fail(f"the clean did not report ok: {final}")
    assert final is not None and final.extra.get("mode") == "clean"
    print(f"clean: reported ok, QEMU exited {took:.1f} s after start ({final.extra})")
    zeros = bytes(64 * MiB)
    with node.disk.open("rb") as handle:  # every byte: the image, the data, the bundle
        while block := handle.read(len(zeros)):
            assert block == zeros[: len(block)], f"non-zero bytes near {handle.tell()}"
    progress = [
        int(status.extra["erased_mib"])
        for _, status in server.statuses
        if status.stage == "erasing" and "erased_mib" in status.extra
    ]
    assert progress and progress == sorted(progress)
    assert progress[-1] == NODE_DISK_BYTES // MiB
    assert "erased /dev/vda in" in node.console_text()


@pytest.mark.timeout(900)
def test_deploy_reports_a_corrupt_image_and_powers_off(
    cache_dir: Path, node: Node, work: Path
) -> None:
    """An image whose bytes do not match the manifest's sha256: the agent reports an error
    at the verifying stage and powers off by itself. Uses the host's kernel (the deploy
    ramdisk's other source) and a tiny image, so it is quick."""
    for tool in (QEMU, "xorriso"):
        require_or_fail(_which(tool), f"{tool} is not installed (run scripts/setup.sh)")
    for path, package in SYSLINUX_FILES[1:]:
        require_or_fail(Path(path).is_file(), f"{path} is missing (Debian package {package})")
    require_or_fail(
        any(Path("/boot").glob("vmlinuz-*")), "no host kernel (linux-image-cloud-amd64)"
    )
    image = work / "tiny.raw"
    image.write_bytes(os.urandom(4 * MiB))
    claimed = DiskImage(image, "0" * 64, 4 * MiB)  # not what is served
    with node.disk.open("wb") as handle:
        handle.truncate(512 * MiB)
    with DeployServer(claimed, b'{"instance_id": "x"}', stream_sha256="0" * 64) as server:
        iso = build_deploy_iso(cache_dir, server.guest_url, work / "deploy.iso")
        proc = node.boot("bad-deploy", cdrom=iso)
        took = node.wait_exit(proc, 300)
    final = server.statuses[-1][1] if server.statuses else None
    if final is None or final.status != "error":
        node.fail(f"expected an error report, got {final}")
    assert final is not None
    assert final.stage == "verifying"
    assert f"the image is {'0' * 64}" in final.message
    print(f"\ncorrupt image: error reported, QEMU exited {took:.1f} s after start")
    with node.disk.open("rb") as handle:  # the data partition was never added
        handle.seek(MBR_TABLE_OFFSET + (DATA_PARTITION - 1) * MBR_ENTRY_SIZE)
        assert handle.read(MBR_ENTRY_SIZE) != mbr_entry(
            data_partition(4 * MiB, 512 * MiB // SECTOR), TYPE_LINUX
        )
