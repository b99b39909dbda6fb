"""The whole-disk image format: a raw disk per recipe, and the partition layout it shares
with the deploy agent that extends it on the node.

Beside the recipe's other artifacts in the cache (same cache key, see builder.py)::

    <name>-<hash16>.disk.raw          whole-disk image: MBR (syslinux mbr.bin), p1 ext4
                                      onep-root with extlinux booting the image's own kernel
                                      and initrd with VM_CMDLINE (the VM init, which also
                                      knows bare metal), p2 vfat onep-config (empty). Sparse.
    <name>-<hash16>.disk.raw.sha256   its sha256 (sha256sum format), written at build

Disk layout (MBR, 512-byte sectors, every partition aligned to 1 MiB)::

    sector 0           syslinux mbr.bin (440 bytes), disk id, partition table
    p1 from 1 MiB      ext4, label onep-root, active: the recipe's root filesystem,
                       extlinux in /boot/extlinux                              } in the
    p2 after p1        vfat, label onep-config, CONFIG_PARTITION_MIB: empty    } image
                       in the image; the agent writes bundle.json (+ hostname)
    p3 from the first  written by the agent (type 0x83): the data volume's size when the
       MiB at or after manifest gives one (data_mib), else the rest of the disk; left
       image_size      blank (its first and last MiB zeroed); the image's init makes it
                       ext4 labelled onep-data at first boot and mounts it at
                       /var/lib/oneplatform. The rest of the disk stays free: the guest
                       agent grows p3 into it online (guest/storage.py), up to the end of
                       the disk, the most the data can grow to

The deploy agent that writes the image and adds p3 is baremetal/deploy_agent.py; the
deploy ramdisk and ISO that carry it are baremetal/deploy_iso.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from oneplatform.errors import ImageBuildError
from oneplatform.guest.contract import CONFIG_LABEL
from oneplatform.images.builder import (
    VM_CMDLINE,
    VM_DISK_SLACK,
    Progress,
    build_rootfs,
    cache_lock,
    find_kernel,
    find_tools,
    fsync_dir,
    make_root_ext4,
    require_free,
    rootfs_path,
    run_tool,
    unpack_rootfs,
)
from oneplatform.images.recipes import Recipe

# The partition layout (the image's and the deploy agent's).
SECTOR = 512
MiB = 1024**2
ALIGN_SECTORS = MiB // SECTOR
CONFIG_PARTITION = 2
DATA_PARTITION = 3
CONFIG_PARTITION_MIB = 16
MIN_DATA_MIB = 128  # a disk without this much room after the image is refused
MBR_TABLE_OFFSET = 446
MBR_ENTRY_SIZE = 16
MBR_MAX_SECTORS = 0xFFFFFFFF  # 32-bit LBA fields: an MBR addresses at most 2 TiB
TYPE_LINUX = 0x83
TYPE_FAT16_LBA = 0x0E
# The image in the cache and its making.
DISK_SUFFIX = ".disk.raw"
DISK_WORK_SUFFIX = ".disk-build"
DISK_TOOLS = ("tar", "mkfs.ext4", "mkfs.vfat", "extlinux", "mount", "umount")
# Debian's paths (package syslinux-common).
MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")
LDLINUX_C32 = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
EXTLINUX_DIR = "boot/extlinux"
# The root partition's room over its content: less than a VM root disk's, since the data
# has its own partition and the root partition is never grown (a smaller image is also
# quicker to stream and verify during a deploy).
ROOT_GROWTH = 1.10
ROOT_SLACK = 256 * MiB
_CHUNK = MiB
_ZEROS = bytes(_CHUNK)


@dataclass(frozen=True)
class DiskImage:
    """A raw whole-disk image (sparse file) and the sha256 of all of its ``size`` bytes."""

    path: Path
    sha256: str
    size: int


# --- the block map: what a deploy streams and writes ------------------------------------------
MAP_BLOCK = MiB  # the unit of the map: the deploy agent's dd block size
MAP_SUFFIX = ".bmap.json"


@dataclass(frozen=True)
class BlockMap:
    """The image's blocks that are not all zeros, as runs of ``MAP_BLOCK`` blocks.

    A deploy streams only these blocks, back to back, and writes each run at its place on a
    disk that cleaning left all zeros; ``stream_sha256`` is the sha256 of that stream (the
    blocks in map order), which the node computes while it writes and reports.
    """

    image_sha256: str  # of the whole image this maps
    runs: tuple[tuple[int, int], ...]  # (first block, blocks)
    stream_sha256: str

    @property
    def stream_bytes(self) -> int:
        return sum(count for _start, count in self.runs) * MAP_BLOCK

    def render_runs(self) -> str:
        """``START:COUNT,...`` as the manifest carries it."""
        return ",".join(f"{start}:{count}" for start, count in self.runs)


def block_map(disk: DiskImage) -> BlockMap:
    """The image's block map, computed once (holes skipped, all-zero blocks dropped) and
    kept beside the image; recomputed when the kept one names another image."""
    kept = disk.path.with_name(disk.path.name + MAP_SUFFIX)
    try:
        data = json.loads(kept.read_text(encoding="ascii"))
        found = BlockMap(
            data["image_sha256"], tuple((int(s), int(c)) for s, c in data["runs"]), data["stream"]
        )
        if found.image_sha256 == disk.sha256:
            return found
    except (OSError, ValueError, KeyError, TypeError):
        pass
    made = _compute_block_map(disk)
    tmp = kept.with_name(f".{kept.name}.{os.getpid()}.tmp")
    tmp.write_text(
        json.dumps(
            {"image_sha256": made.image_sha256, "runs": made.runs, "stream": made.stream_sha256}
        ),
        encoding="ascii",
    )
    os.replace(tmp, kept)
    return made


def _compute_block_map(disk: DiskImage) -> BlockMap:
    if disk.size % MAP_BLOCK:
        raise ImageBuildError(f"{disk.path.name}: {disk.size} bytes is not whole MiB blocks")
    runs: list[list[int]] = []
    digest = hashlib.sha256()
    fd = os.open(disk.path, os.O_RDONLY)
    try:
        position = 0
        while position < disk.size:
            try:
                data_at = os.lseek(fd, position, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            hole_at = os.lseek(fd, data_at, os.SEEK_HOLE)
            block = data_at // MAP_BLOCK
            while block * MAP_BLOCK < min(hole_at, disk.size):
                chunk = os.pread(fd, MAP_BLOCK, block * MAP_BLOCK)
                if chunk != _ZEROS[: len(chunk)]:
                    digest.update(chunk)
                    if runs and runs[-1][0] + runs[-1][1] == block:
                        runs[-1][1] += 1
                    else:
                        runs.append([block, 1])
                block += 1
            position = max(hole_at, block * MAP_BLOCK)
    finally:
        os.close(fd)
    return BlockMap(disk.sha256, tuple((s, c) for s, c in runs), digest.hexdigest())


def stream_blocks(disk: DiskImage, bmap: BlockMap) -> Iterator[bytes]:
    """The mapped blocks, in map order: what a deploy sends."""
    with disk.path.open("rb") as handle:
        for start, count in bmap.runs:
            handle.seek(start * MAP_BLOCK)
            left = count * MAP_BLOCK
            while left > 0:
                chunk = handle.read(min(left, 4 * MAP_BLOCK))
                if not chunk:
                    raise ImageBuildError(f"{disk.path.name} is shorter than its block map")
                left -= len(chunk)
                yield chunk


# --- partition layout (the agent's shell arithmetic mirrors data_partition) ----------------


@dataclass(frozen=True)
class Span:
    """A partition's place on the disk, in 512-byte sectors."""

    start: int
    sectors: int

    @property
    def end(self) -> int:
        return self.start + self.sectors


def align_up(sectors: int) -> int:
    return -(-sectors // ALIGN_SECTORS) * ALIGN_SECTORS


def image_layout(root_bytes: int) -> tuple[Span, Span, int]:
    """(root, config) partitions and the image's size in bytes for a root fs of this size."""
    if root_bytes <= 0 or root_bytes % MiB:
        raise ValueError("the root filesystem must be a positive whole number of MiB")
    root = Span(ALIGN_SECTORS, root_bytes // SECTOR)
    config = Span(root.end, CONFIG_PARTITION_MIB * MiB // SECTOR)
    return root, config, config.end * SECTOR


def data_partition(image_size: int, disk_sectors: int, data_mib: int | None = None) -> Span:
    """The data partition the agent adds: from the first MiB at or after the image, of
    ``data_mib`` MiB, or (None) to the last whole MiB of the disk (or of what an MBR can
    address): the most it can grow to. Raises ValueError when fewer than MIN_DATA_MIB, or
    than ``data_mib``, remain."""
    start = align_up(-(-image_size // SECTOR))
    end = min(disk_sectors, MBR_MAX_SECTORS) // ALIGN_SECTORS * ALIGN_SECTORS
    room = end - start
    need = max(MIN_DATA_MIB, data_mib or 0)
    if room < need * ALIGN_SECTORS:
        have = max(room, 0) * SECTOR // MiB
        raise ValueError(
            f"the disk has {have} MiB after the image; the data partition needs {need}"
        )
    return Span(start, room if data_mib is None else data_mib * ALIGN_SECTORS)


def mbr_entry(span: Span, part_type: int, *, active: bool = False) -> bytes:
    """One 16-byte MBR partition entry; CHS fields hold the 'use LBA' marker (FE FF FF)."""
    if span.start > MBR_MAX_SECTORS or span.sectors > MBR_MAX_SECTORS:
        raise ValueError("an MBR partition must lie within the first 2 TiB")
    chs = b"\xfe\xff\xff"
    return (
        bytes([0x80 if active else 0x00])
        + chs
        + bytes([part_type])
        + chs
        + struct.pack("<II", span.start, span.sectors)
    )


def mbr(boot_code: bytes, disk_id: int, entries: list[bytes]) -> bytes:
    """A whole 512-byte MBR: boot code (at most 440 bytes), disk id, up to 4 entries."""
    if len(boot_code) > 440 or len(entries) > 4:
        raise ValueError("the MBR holds 440 bytes of boot code and four partitions")
    table = b"".join(entries).ljust(4 * MBR_ENTRY_SIZE, b"\0")
    return boot_code.ljust(440, b"\0") + struct.pack("<I", disk_id) + b"\0\0" + table + b"\x55\xaa"


def partition_device(disk: str, number: int) -> str:
    """/dev/vda + 2 -> /dev/vda2; /dev/nvme0n1 + 2 -> /dev/nvme0n1p2 (as the kernel names)."""
    return f"{disk}p{number}" if disk[-1].isdigit() else f"{disk}{number}"


# --- the whole-disk image ------------------------------------------------------------------


def disk_image_path(recipe: Recipe, cache_dir: Path) -> Path:
    """Where the recipe's whole-disk image is (or will be); no I/O beyond hashing."""
    return cache_dir / f"{rootfs_path(recipe, cache_dir).stem}{DISK_SUFFIX}"


def _sha_path(disk: Path) -> Path:
    return disk.with_name(f"{disk.name}.sha256")


def disk_image_if_built(recipe: Recipe, cache_dir: Path) -> DiskImage | None:
    """The recipe's whole-disk image when it is in the cache, else None."""
    path = disk_image_path(recipe, cache_dir)
    try:
        digest = _sha_path(path).read_text(encoding="ascii").split()[0]
        size = path.stat().st_size
    except (OSError, IndexError):
        return None
    return DiskImage(path, digest, size)


def build_disk_image(
    recipe: Recipe, cache_dir: Path, progress: Progress | None = None
) -> DiskImage:
    """Export the recipe's root filesystem as a bootable raw whole-disk image.

    Builds (or reuses) the cached rootfs tarball; returns at once when the image is cached.
    Takes a per-recipe lock and checks free space first; the image appears in the cache
    only when complete (written under a temporary name, renamed). Needs root, tar,
    mkfs.ext4, mkfs.vfat, extlinux, loop mounts, and syslinux's mbr.bin. Raises
    :class:`ImageBuildError` when any of that fails or disk space is short.
    """
    built = disk_image_if_built(recipe, cache_dir)
    if built is not None:
        return built
    tarball = build_rootfs(recipe, cache_dir, progress)
    target = disk_image_path(recipe, cache_dir)
    with cache_lock(cache_dir / f".{tarball.stem}.disk.lock"):
        built = disk_image_if_built(recipe, cache_dir)
        if built is not None:  # another process finished it while we waited
            return built
        tools = find_tools(DISK_TOOLS, "a bare-metal disk image")
        boot_code = _syslinux_file(MBR_BIN, "syslinux-common").read_bytes()[:440]
        for stale in cache_dir.glob(f".{tarball.stem}.*{DISK_WORK_SUFFIX}"):
            shutil.rmtree(stale, ignore_errors=True)
        # The unpacked tree, the root filesystem and the disk are each about the tar's size.
        need = 3 * tarball.stat().st_size + VM_DISK_SLACK
        require_free(cache_dir, need, "for a bare-metal disk image")
        work = Path(
            tempfile.mkdtemp(prefix=f".{tarball.stem}.", suffix=DISK_WORK_SUFFIX, dir=cache_dir)
        )
        try:
            return _export_disk(tarball, work, target, boot_code, tools, _say(progress))
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _say(progress: Progress | None, prefix: str = "disk") -> Progress:
    def say(line: str) -> None:
        if progress is not None:
            progress(f"{prefix}: {line}")

    return say


def extlinux_conf(kernel: str, initrd: str, cmdline: str = VM_CMDLINE) -> str:
    """The root partition's /boot/extlinux/extlinux.conf (paths from the filesystem root)."""
    return (
        "# Written by the OnePlatform image builder: boot the image's own kernel.\n"
        "SERIAL 0 115200\n"
        "DEFAULT onep\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "LABEL onep\n"
        f"  LINUX {kernel}\n"
        f"  INITRD {initrd}\n"
        f"  APPEND {cmdline}\n"
    )


def _export_disk(
    tarball: Path,
    work: Path,
    target: Path,
    boot_code: bytes,
    tools: dict[str, str],
    say: Progress,
) -> DiskImage:
    started = time.monotonic()
    root = unpack_rootfs(tarball, work / "root", tools, say)
    kernel, initrd = find_kernel(root, tarball.name)
    conf = root / EXTLINUX_DIR / "extlinux.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(extlinux_conf(f"/boot/{kernel.name}", f"/boot/{initrd.name}"))
    root_fs = work / "root.ext4"
    root_size = make_root_ext4(root, root_fs, tools, say, growth=ROOT_GROWTH, slack=ROOT_SLACK)
    shutil.rmtree(root)  # frees its space before the disk is written
    _install_extlinux(root_fs, work / "mnt", tools, say)
    config_fs = work / "config.vfat"
    with config_fs.open("wb") as handle:
        handle.truncate(CONFIG_PARTITION_MIB * MiB)
    run_tool([tools["mkfs.vfat"], "-F", "16", "-n", CONFIG_LABEL, str(config_fs)], say)

    root_span, config_span, size = image_layout(root_size)
    disk_id = int.from_bytes(hashlib.sha256(tarball.name.encode()).digest()[:4], "little")
    table = mbr(
        boot_code,
        disk_id,
        [mbr_entry(root_span, TYPE_LINUX, active=True), mbr_entry(config_span, TYPE_FAT16_LBA)],
    )
    part = work / "disk.raw"
    say(f"writing the whole-disk image: {size / MiB:.0f} MiB (sparse)")
    pieces = [
        (0, _bytes_chunks(table)),
        (root_span.start * 512, _file_chunks(root_fs)),
        (config_span.start * 512, _file_chunks(config_fs)),
    ]
    digest = _write_sparse(part, size, pieces)
    sha_part = work / "disk.raw.sha256"
    sha_part.write_text(f"{digest}  {target.name}\n", encoding="ascii")
    for path in (part, sha_part):
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    # The image last: it counts as built only when its checksum is there too.
    os.replace(sha_part, _sha_path(target))
    os.replace(part, target)
    fsync_dir(target.parent)
    block_map(DiskImage(target, digest, size))  # kept beside it: the first deploy needs it
    used = target.stat().st_blocks * 512
    say(
        f"{target.name}: {size / MiB:.0f} MiB ({used / MiB:.0f} MiB allocated), sha256 "
        f"{digest[:16]}..., built in {time.monotonic() - started:.1f} s"
    )
    return DiskImage(target, digest, size)


def _install_extlinux(root_fs: Path, mnt: Path, tools: dict[str, str], say: Progress) -> None:
    """extlinux writes its boot sector and ldlinux.sys into the mounted filesystem."""
    mnt.mkdir()
    run_tool([tools["mount"], "-o", "loop", str(root_fs), str(mnt)], say)
    try:
        ldlinux = _syslinux_file(LDLINUX_C32, "syslinux-common")
        shutil.copyfile(ldlinux, mnt / EXTLINUX_DIR / "ldlinux.c32")
        run_tool([tools["extlinux"], "--install", str(mnt / EXTLINUX_DIR)], say)
    finally:
        run_tool([tools["umount"], str(mnt)], say)


def _bytes_chunks(data: bytes) -> Iterator[bytes]:
    yield data


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


def _write_sparse(out: Path, size: int, pieces: Sequence[tuple[int, Iterable[bytes]]]) -> str:
    """Write the pieces at their offsets into a new sparse file of ``size`` bytes, skipping
    all-zero chunks (holes read as zeros); returns the sha256 of the whole file."""
    digest = hashlib.sha256()
    position = 0
    with out.open("wb") as handle:
        handle.truncate(size)
        for offset, chunks in sorted(pieces, key=lambda piece: piece[0]):
            if offset < position:
                raise ImageBuildError("the disk image's pieces overlap")
            _hash_zeros(digest, offset - position)
            position = offset
            for chunk in chunks:
                if chunk != _ZEROS[: len(chunk)]:
                    handle.seek(position)
                    handle.write(chunk)
                digest.update(chunk)
                position += len(chunk)
        if position > size:
            raise ImageBuildError("the disk image's pieces do not fit its size")
        _hash_zeros(digest, size - position)
    return digest.hexdigest()


def _hash_zeros(digest: hashlib._Hash, count: int) -> None:
    while count > 0:
        step = min(count, _CHUNK)
        digest.update(_ZEROS[:step])
        count -= step


def _syslinux_file(path: Path, package: str) -> Path:
    if not path.is_file():
        raise ImageBuildError(f"{path} is missing: install the Debian package {package}")
    return path


# --- hooks for the deploy ISO (baremetal/deploy_iso.py): one implementation of each
syslinux_file = _syslinux_file
labelled_progress = _say
