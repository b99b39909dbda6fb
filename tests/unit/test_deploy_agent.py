"""The deploy protocol, the disk layout and the pieces of the deploy ISO that are pure logic.

The agent's own shell helpers (layout arithmetic, MBR entry bytes) run under ``sh`` here and
must agree byte for byte with the Python side the platform and the image builder use.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from oneplatform.baremetal import deploy_iso
from oneplatform.baremetal.deploy_agent import (
    ZERO_TOOL,
    DeployManifest,
    DeployStatus,
    ProtocolError,
    agent_functions,
    agent_script,
    check_url,
    manifest_mode,
    parse_key_values,
    render_clean_manifest,
)
from oneplatform.baremetal.deploy_iso import (
    cpio_newc,
    is_static_elf,
    isolinux_cfg,
    module_closure,
    module_name,
)
from oneplatform.images import wholedisk
from oneplatform.images.builder import VM_CMDLINE
from oneplatform.images.wholedisk import (
    ALIGN_SECTORS,
    CONFIG_PARTITION_MIB,
    MBR_MAX_SECTORS,
    MIN_DATA_MIB,
    SECTOR,
    TYPE_FAT16_LBA,
    TYPE_LINUX,
    MiB,
    Span,
    data_partition,
    extlinux_conf,
    image_layout,
    mbr,
    mbr_entry,
    partition_device,
)

SHA = "ab" * 32
URL = "http://10.0.2.2:8080/deploy/Tok-en_1"


def manifest(**changes: object) -> DeployManifest:
    fields: dict[str, object] = {
        "image_url": f"{URL}/image",
        "image_sha256": SHA,
        "image_size": 700 * MiB,
        "image_map": "0:2,4:380",
        "stream_sha256": "ef" * 32,
        "config_url": f"{URL}/config",
    }
    fields.update(changes)
    return DeployManifest(**fields)  # type: ignore[arg-type]


# --- manifest and status --------------------------------------------------------------------


def test_manifest_round_trips_as_key_value_lines() -> None:
    full = manifest(
        config_sha256="cd" * 32, target_disk="/dev/vda", hostname="node-1", data_mib=2048
    )
    text = full.render()
    assert "data_mib=2048" in text.splitlines()
    assert text.splitlines()[0] == "version=2"
    assert f"image_size={700 * MiB}" in text.splitlines()
    assert DeployManifest.parse(text) == full
    minimal = manifest()
    assert "hostname" not in minimal.render()
    assert DeployManifest.parse(minimal.render()) == minimal


def test_manifest_parse_ignores_unknown_keys_and_rejects_bad_ones() -> None:
    text = manifest().render() + "future_field=whatever\n\n# comment\n"
    assert DeployManifest.parse(text) == manifest()
    with pytest.raises(ProtocolError, match="version"):
        DeployManifest.parse(text.replace("version=2", "version=1"))
    with pytest.raises(ProtocolError, match="no config_url"):
        DeployManifest.parse("\n".join(line for line in text.splitlines() if "config" not in line))
    with pytest.raises(ProtocolError, match="not a number"):
        DeployManifest.parse(text.replace(f"image_size={700 * MiB}", "image_size=big"))


@pytest.mark.parametrize(
    "changes",
    [
        {"image_sha256": "AB" * 32},
        {"image_sha256": "ab" * 31},
        {"image_size": 0},
        {"image_size": 1000},
        {"image_map": ""},
        {"image_map": "0:2;reboot"},
        {"image_map": "1-2"},
        {"stream_sha256": "ab" * 31},
        {"image_url": "https://example/image"},
        {"image_url": f"{URL}/image with space"},
        {"config_url": f"{URL}/'quoted'"},
        {"target_disk": "/dev/../etc/passwd"},
        {"hostname": "-bad"},
        {"data_mib": MIN_DATA_MIB - 1},
        {"data_mib": MBR_MAX_SECTORS},
    ],
)
def test_manifest_rejects_what_the_agent_could_not_use(changes: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        manifest(**changes)


def test_status_parse() -> None:
    ok = DeployStatus.parse(
        f"status=ok\nstage=done\nsha256={SHA}\ndisk=/dev/vda\nwrite_s=20.28\nuptime_s=95.1\n"
    )
    assert ok.final and ok.sha256 == SHA and ok.disk == "/dev/vda"
    assert ok.extra == {"write_s": "20.28", "uptime_s": "95.1"}
    assert DeployStatus.parse(ok.render()) == ok
    error = DeployStatus.parse(b"status=error\nstage=writing\nmessage=disk full: no space\n")
    assert error.final and error.status == "error" and error.message == "disk full: no space"
    running = DeployStatus.parse("status=running\nstage=verifying\n")
    assert not running.final and running.stage == "verifying"


@pytest.mark.parametrize(
    "body",
    ["", "status=done\n", "status=ok\nstage=done\n", f"status=ok\nsha256={SHA.upper()}\n"],
)
def test_status_rejects_malformed_reports(body: str) -> None:
    with pytest.raises(ProtocolError):
        DeployStatus.parse(body)


def test_key_values_last_wins_and_skips_noise() -> None:
    assert parse_key_values("a=1\nnoise\n=x\na=2\nb= spaced \n") == {"a": "2", "b": "spaced"}


@pytest.mark.parametrize(
    "url",
    [URL, "http://127.0.0.1/deploy/x", "http://localhost:1/a%2Fb"],
)
def test_check_url_accepts_plain_http(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    "url", ["ftp://h/x", "http://h/x y", 'http://h/"x"', "http://h/x;reboot", "http://h/$(x)"]
)
def test_check_url_refuses_what_a_cmdline_or_sh_would_mangle(url: str) -> None:
    with pytest.raises(ProtocolError):
        check_url(url)


# --- layout -------------------------------------------------------------------------------


def test_image_layout() -> None:
    root, config, size = image_layout(678 * MiB)
    assert root == Span(ALIGN_SECTORS, 678 * MiB // SECTOR)
    assert config.start == root.end and config.sectors == CONFIG_PARTITION_MIB * MiB // SECTOR
    assert size == (1 + 678 + CONFIG_PARTITION_MIB) * MiB
    with pytest.raises(ValueError):
        image_layout(MiB + 1)


def test_data_partition_fills_the_disk_from_the_first_mib_after_the_image() -> None:
    gib = 1024**3
    span = data_partition(695 * MiB, 3 * gib // SECTOR)
    assert span.start == 695 * ALIGN_SECTORS
    assert span.end == 3 * gib // SECTOR
    # An image not ending on a MiB boundary, a disk not ending on one either.
    span = data_partition(695 * MiB + 512, 3 * gib // SECTOR + 1000)
    assert span.start == 696 * ALIGN_SECTORS
    assert span.end == 3 * gib // SECTOR
    # An MBR reaches 2 TiB: a larger disk gets a data partition up to there.
    span = data_partition(695 * MiB, 8 * 1024 * gib // SECTOR)
    assert span.end == MBR_MAX_SECTORS // ALIGN_SECTORS * ALIGN_SECTORS
    with pytest.raises(ValueError, match="data partition needs"):
        data_partition(695 * MiB, (695 + MIN_DATA_MIB - 1) * ALIGN_SECTORS)
    assert data_partition(695 * MiB, (695 + MIN_DATA_MIB) * ALIGN_SECTORS).sectors == (
        MIN_DATA_MIB * ALIGN_SECTORS
    )


def test_a_data_partition_of_the_databases_size_leaves_the_rest_of_the_disk_free() -> None:
    disk = 8 * 1024**3 // SECTOR
    room = data_partition(695 * MiB, disk)
    sized = data_partition(695 * MiB, disk, data_mib=1024)
    assert (sized.start, sized.sectors) == (room.start, 1024 * ALIGN_SECTORS)
    assert sized.end < room.end  # the room it grows into
    assert data_partition(695 * MiB, disk, data_mib=room.sectors // ALIGN_SECTORS) == room
    with pytest.raises(ValueError, match="needs 8000"):
        data_partition(695 * MiB, disk, data_mib=8000)


@pytest.mark.parametrize(
    ("room", "data_mib", "expected"),
    [(4096 * ALIGN_SECTORS, "", "4096"), (4096 * ALIGN_SECTORS, "1024", "1024"),
     (4096 * ALIGN_SECTORS, "4096", "4096")],
)  # fmt: skip
def test_the_agents_data_size_matches_python(room: int, data_mib: str, expected: str) -> None:
    out = _sh(f'data_sectors {room} "{data_mib}"').decode().split()
    assert [int(value) for value in out] == [int(expected) * ALIGN_SECTORS]
    assert _sh(f"data_sectors {room} 4097 || echo no room") == b"no room\n"


def test_mbr_entries_and_table() -> None:
    entry = mbr_entry(Span(2048, 4096), TYPE_LINUX, active=True)
    assert entry == b"\x80\xfe\xff\xff\x83\xfe\xff\xff" + struct.pack("<II", 2048, 4096)
    assert mbr_entry(Span(1, 2), TYPE_FAT16_LBA)[:5] == b"\x00\xfe\xff\xff\x0e"
    with pytest.raises(ValueError):
        mbr_entry(Span(2048, MBR_MAX_SECTORS + 1), TYPE_LINUX)
    sector = mbr(b"\xeb" * 440, 0x12345678, [entry])
    assert len(sector) == 512 and sector[510:] == b"\x55\xaa"
    assert sector[440:444] == struct.pack("<I", 0x12345678)
    assert sector[446:462] == entry and sector[462:510] == bytes(48)


def test_partition_device_names() -> None:
    assert partition_device("/dev/vda", 2) == "/dev/vda2"
    assert partition_device("/dev/nvme0n1", 3) == "/dev/nvme0n1p3"
    assert partition_device("/dev/mmcblk0", 1) == "/dev/mmcblk0p1"


# --- the script -----------------------------------------------------------------------------


def _sh(snippet: str) -> bytes:
    """Run the agent's helpers and ``snippet`` under busybox sh when present, else sh."""
    shell = shutil.which("busybox")
    argv = [shell, "sh"] if shell else ["sh"]
    proc = subprocess.run(
        [*argv, "-c", f"{agent_functions()}\n{snippet}"], capture_output=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_agent_script_renders_and_parses() -> None:
    script = agent_script()
    assert script.startswith("#!/bin/sh\n")
    assert re.search(r"@[A-Z_]+@", script) is None
    assert "onep.deploy_url" in script and "poweroff -f" in script
    proc = subprocess.run(["sh", "-n"], input=script.encode(), capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("image_size", "disk_sectors"),
    [
        (695 * MiB, 3 * 1024**3 // SECTOR),
        (695 * MiB + 512, 3 * 1024**3 // SECTOR + 1000),
        (18 * MiB, 512 * MiB // SECTOR),
        (695 * MiB, 8 * 1024**4 // SECTOR),
    ],
)
def test_the_agents_layout_arithmetic_matches_python(image_size: int, disk_sectors: int) -> None:
    expected = data_partition(image_size, disk_sectors)
    out = _sh(f"data_span {image_size} {disk_sectors}").decode().split()
    assert [int(value) for value in out] == [expected.start, expected.sectors]
    entry = _sh(f"data_entry {expected.start} {expected.sectors}")
    assert entry == mbr_entry(expected, TYPE_LINUX)


def test_the_agent_erases_every_byte_of_the_disk_and_says_how_far(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    size = 3 * MiB + 5 * SECTOR  # not a whole number of MiB: the tail is erased too
    disk.write_bytes(b"tenant-1 row " * (size // 13) + b"x" * (size % 13))
    out = _sh(
        f'ERASE_CHUNK_MIB=2\nreport() {{ echo "$*"; }}\nerase_disk {disk} {size // SECTOR}'
    ).decode()
    assert disk.stat().st_size == size
    assert disk.read_bytes() == bytes(size)
    assert out.splitlines() == [
        "status=running stage=erasing erased_mib=2 disk_mib=3",
        "status=running stage=erasing erased_mib=3 disk_mib=3",
    ]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("losetup") is None, reason="needs root")
def test_the_clean_zeroes_a_block_device_through_the_kernel(tmp_path: Path) -> None:
    """On a block device the chunks go to BLKZEROOUT (blkdiscard -z), not through dd."""
    backing = tmp_path / "disk"
    size = 4 * MiB
    backing.write_bytes(b"tenant-2 row " * (size // 13) + b"y" * (size % 13))
    loop = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        proc = subprocess.run(
            ["sh", "-c", f'{agent_functions()}\nERASE_CHUNK_MIB=2\nZERO_TOOL={ZERO_TOOL}\n'
             f'report() {{ echo "$*"; }}\nerase_disk {loop} {size // SECTOR}'],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "through the kernel" in proc.stderr and "zeroout failed" not in proc.stderr
        assert proc.stdout.count("stage=erasing") == 2
    finally:
        subprocess.run(["losetup", "--detach", loop], check=True)
    assert backing.read_bytes() == bytes(size)


def test_the_clean_falls_back_to_dd_where_the_kernel_cannot_zero(tmp_path: Path) -> None:
    disk = tmp_path / "disk"  # a regular file: blkdiscard refuses it
    disk.write_bytes(b"z" * (2 * MiB))
    out = _sh(
        f'ERASE_CHUNK_MIB=1\nZERO_TOOL={ZERO_TOOL}\nreport() {{ echo "$*"; }}\n'
        f"erase_disk {disk} {2 * MiB // SECTOR}"
    ).decode()
    assert disk.read_bytes() == bytes(2 * MiB) and out.count("stage=erasing") == 2


# --- the block map and the streamed write ------------------------------------------------------


def _sparse_image(path: Path, blocks: dict[int, bytes], size_mib: int) -> wholedisk.DiskImage:
    """A sparse raw image of ``size_mib`` MiB with ``blocks`` (MiB index: content) written."""
    with path.open("wb") as handle:
        handle.truncate(size_mib * MiB)
        for index, content in blocks.items():
            handle.seek(index * MiB)
            handle.write(content)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return wholedisk.DiskImage(path, digest, size_mib * MiB)


def test_the_block_map_keeps_only_blocks_that_are_not_zeros(tmp_path: Path) -> None:
    written = {
        0: b"mbr".ljust(MiB, b"\1"),
        1: b"boot",  # the rest of this MiB is a hole
        2: bytes(MiB),  # written, but all zeros: not mapped
        5: b"root",
        6: b"more root",
        9: b"config",
    }
    image = _sparse_image(tmp_path / "disk.raw", written, 12)
    bmap = wholedisk.block_map(image)
    assert bmap.runs == ((0, 2), (5, 2), (9, 1))
    assert bmap.render_runs() == "0:2,5:2,9:1"
    stream = b"".join(wholedisk.stream_blocks(image, bmap))
    assert len(stream) == bmap.stream_bytes == 5 * MiB
    assert hashlib.sha256(stream).hexdigest() == bmap.stream_sha256
    data = image.path.read_bytes()
    assert stream == data[: 2 * MiB] + data[5 * MiB : 7 * MiB] + data[9 * MiB : 10 * MiB]
    # Kept beside the image, and recomputed when it names another image.
    kept = tmp_path / f"disk.raw{wholedisk.MAP_SUFFIX}"
    assert kept.is_file() and wholedisk.block_map(image) == bmap
    other = _sparse_image(tmp_path / "disk.raw", {3: b"x"}, 12)
    assert wholedisk.block_map(other).runs == ((3, 1),)


def test_the_agent_writes_each_run_in_place_and_notices_a_short_stream(tmp_path: Path) -> None:
    """The streamed write onto a zeroed disk gives back the image, byte for byte."""
    image = _sparse_image(
        tmp_path / "disk.raw", {0: os.urandom(MiB), 3: os.urandom(MiB // 2), 4: b"x"}, 8
    )
    bmap = wholedisk.block_map(image)
    stream = tmp_path / "stream"
    stream.write_bytes(b"".join(wholedisk.stream_blocks(image, bmap)))
    disk = tmp_path / "node-disk"
    disk.write_bytes(bytes(16 * MiB))  # cleaned: all zeros, bigger than the image
    runs = bmap.render_runs()
    out = _sh(f"write_runs {disk} {runs} <{stream} && map_mib {runs} && read_runs {disk} {runs}")
    assert out[:2] == b"3\n" and out[2:] == stream.read_bytes()
    assert disk.read_bytes()[: 8 * MiB] == image.path.read_bytes()
    assert disk.read_bytes()[8 * MiB :] == bytes(8 * MiB)
    short = tmp_path / "short"
    short.write_bytes(stream.read_bytes()[: 2 * MiB])
    shell = shutil.which("busybox")
    argv = [shell, "sh"] if shell else ["sh"]
    proc = subprocess.run(
        [*argv, "-c", f"{agent_functions()}\nwrite_runs {disk} {bmap.render_runs()} <{short}"],
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode != 0


def test_the_agents_partition_names_match_python() -> None:
    out = _sh("partition_name /dev/vda 2; partition_name /dev/nvme0n1 3").decode().split()
    assert out == [partition_device("/dev/vda", 2), partition_device("/dev/nvme0n1", 3)]


# --- the ISO and ramdisk pieces ----------------------------------------------------------------


def test_boot_configs() -> None:
    conf = extlinux_conf("/boot/vmlinuz-6.1", "/boot/initrd.img-6.1")
    assert "  LINUX /boot/vmlinuz-6.1\n" in conf and "  INITRD /boot/initrd.img-6.1\n" in conf
    assert f"  APPEND {VM_CMDLINE}\n" in conf
    assert "init=/usr/local/sbin/onep-vm-init" in conf and "root=LABEL=onep-root" in conf
    cfg = isolinux_cfg(URL)
    assert f" onep.deploy_url={URL}\n" in cfg and "console=ttyS0" in cfg
    with pytest.raises(ProtocolError):
        isolinux_cfg("http://h/x y")


def test_module_closure_orders_dependencies_first() -> None:
    dep = (
        "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko "
        "kernel/drivers/virtio/virtio.ko\n"
        "kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\n"
        "kernel/drivers/virtio/virtio.ko:\n"
        "kernel/fs/fat/vfat.ko.xz: kernel/fs/fat/fat.ko.xz\n"
        "kernel/fs/fat/fat.ko.xz:\n"
    )
    paths, missing = module_closure(dep, ["virtio_blk", "vfat", "ahci"])
    assert paths == [
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/fs/fat/fat.ko.xz",
        "kernel/fs/fat/vfat.ko.xz",
    ]
    assert missing == ("ahci",)
    assert module_name("kernel/x/nls-cp437.ko.xz") == "nls_cp437"


def test_cpio_newc_archive() -> None:
    archive = cpio_newc(
        [("bin", 0o040755, b"", 0), ("bin/hello", 0o100644, b"hi\n", 0),
         ("dev/console", 0o020600, b"", os.makedev(5, 1))]
    )  # fmt: skip
    assert archive.startswith(b"070701")
    assert len(archive) % 4 == 0
    assert b"bin/hello\0" in archive and b"hi\n" in archive and b"TRAILER!!!\0" in archive
    cpio = shutil.which("cpio")
    if cpio:  # the real tool agrees
        listing = subprocess.run(
            [cpio, "-t", "--quiet"], input=archive, capture_output=True, timeout=30
        )
        assert listing.stdout.decode().split() == ["bin", "bin/hello", "dev/console"]


def test_is_static_elf() -> None:
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)  # program headers right after the ELF header
    struct.pack_into("<HH", header, 0x36, 56, 2)
    load, interp = bytearray(56), bytearray(56)
    struct.pack_into("<I", load, 0, 1)
    struct.pack_into("<I", interp, 0, 3)
    assert is_static_elf(bytes(header + load + load))
    assert not is_static_elf(bytes(header + load + interp))
    assert not is_static_elf(b"#!/bin/sh\n" + bytes(100))


def test_write_sparse_hashes_the_whole_file_and_leaves_holes(tmp_path: Path) -> None:
    out = tmp_path / "disk.raw"
    payload = os.urandom(3 * MiB)
    pieces = [(0, [b"\x55" * 512]), (4 * MiB, [payload[:MiB], bytes(MiB), payload[MiB:]])]
    digest = wholedisk._write_sparse(out, 16 * MiB, pieces)
    data = out.read_bytes()
    assert len(data) == 16 * MiB
    assert hashlib.sha256(data).hexdigest() == digest
    assert data[4 * MiB : 5 * MiB] == payload[:MiB] and data[6 * MiB : 8 * MiB] == payload[MiB:]
    assert out.stat().st_blocks * 512 <= 5 * MiB  # the zero MiB and the gaps are holes


def test_initramfs_has_the_agent_as_init() -> None:
    files = deploy_iso._KernelFiles(
        version="6.1.0-test",
        kernel=b"kernel",
        modules={"kernel/drivers/block/virtio_blk.ko": b"\x7fELFmodule"},
        modules_dep="kernel/drivers/block/virtio_blk.ko:\nkernel/other.ko:\n",
        missing=("ahci",),
    )
    tools = deploy_iso.host_program(ZERO_TOOL)
    assert set(tools) >= {ZERO_TOOL.lstrip("/"), "lib64/ld-linux-x86-64.so.2"}, set(tools)
    assert any(name.endswith("/libc.so.6") for name in tools)
    archive = deploy_iso._initramfs(files, b"BUSYBOX", "#!/bin/sh\n", tools)
    assert b"usr/sbin/blkdiscard\0" in archive
    assert b"init\0" in archive and b"bin/busybox\0" in archive
    assert b"lib/modules/6.1.0-test/kernel/drivers/block/virtio_blk.ko\0" in archive
    assert b"kernel/drivers/block/virtio_blk.ko:\n" in archive
    assert b"kernel/other.ko" not in archive  # modules.dep lists only what is shipped
    assert b"etc/onep-modules\0" in archive
    assert b"\nahci\n" not in archive  # the module list holds only what the kernel has


def test_the_agents_status_messages_are_one_line() -> None:
    out = _sh("one_line 'disk full:\n no space\tleft' $(printf 'x%.0s' $(seq 500))").decode()
    out = out.removesuffix("\n")  # cut ends its line; $(...) in the agent drops it
    assert out.startswith("disk full:  no space left x")
    assert "\n" not in out and len(out) == 400
    assert DeployStatus.parse(f"status=error\nmessage={out}\n").message == out.strip()


def test_clean_manifest_and_status() -> None:
    text = render_clean_manifest()
    assert text == "version=2\nmode=clean\n"
    assert manifest_mode(text) == "clean" and manifest_mode(manifest().render()) == "deploy"
    assert "target_disk=/dev/sda" in render_clean_manifest("/dev/sda")
    with pytest.raises(ProtocolError):
        render_clean_manifest("sda; reboot")
    with pytest.raises(ProtocolError, match="not a deploy manifest"):
        DeployManifest.parse(text)
    done = DeployStatus.parse("status=ok\nstage=done\nmode=clean\ndisk=/dev/vda\n")
    assert done.final and done.sha256 is None and done.extra["mode"] == "clean"


def test_the_agents_wipe_zeroes_the_first_and_last_mib(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\xff" * 8 * MiB)
    _sh(f"wipe_ends {disk} 1024 8192 && wipe_ends {disk} 16000 100")
    data = disk.read_bytes()
    zero = [i // SECTOR for i in range(0, len(data), SECTOR) if data[i : i + SECTOR] == bytes(512)]
    assert zero == [*range(1024, 3072), *range(7168, 9216), *range(16000, 16100)]
