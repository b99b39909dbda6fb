"""The data disk as the guest sees it: its size and use, and growing its filesystem.

The platform grows the disk underneath (a VM's data disk grows with libvirt's block resize
while the guest runs; virtio-blk tells the kernel the new capacity); the agent then grows the
ext4 filesystem mounted at :data:`~.contract.DATA_ROOT` into it with ``resize2fs``, online.
On bare metal the data is a partition of the node's disk (the last one of its MBR, sized at
deploy to the database's storage, the rest of the disk left free): the agent grows the
partition first, online — its MBR entry rewritten in place, then the kernel told the new
length with util-linux's ``resizepart`` (BLKPG, which works on a mounted partition where
re-reading the table would not) — then its filesystem. A partition grows up to the end of
its disk (or of the next partition, or of what an MBR addresses) and no further.
Where the data is not a disk of its own (a container's volume is a directory of the host's
storage, bind-mounted), there is no filesystem of ours to grow: the answer says so, with the
usage the guest sees.
"""

from __future__ import annotations

import os
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from .contract import DATA_ROOT
from .processes import ChildProcesses, EngineError

RESIZE_TIMEOUT_S = 600.0  # resize2fs of a large filesystem under TCG
DEVICE_WAIT_S = 30.0  # for the kernel to see the disk's new capacity
SECTOR = 512  # /sys/class/block/*/size counts 512-byte sectors
ALIGN_SECTORS = 2048  # partitions end on a MiB (as images/wholedisk.py lays them out)
# The MBR (images/wholedisk.py writes it; standard library only here, so repeated).
MBR_TABLE_OFFSET = 446
MBR_ENTRY_SIZE = 16
MBR_MAX_SECTORS = 0xFFFFFFFF
MBR_SIGNATURE = b"\x55\xaa"
TYPE_GPT_PROTECTIVE = 0xEE


class StorageError(RuntimeError):
    """The filesystem could not be grown; ``code`` is the agent's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DataMount:
    """What is mounted at the data path: its source device, filesystem type, and the
    directory of that filesystem the mount shows (``/`` for a whole filesystem)."""

    source: str
    fstype: str
    root: str


def unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def find_mount(mountinfo: str, path: str = DATA_ROOT) -> DataMount | None:
    """The last mount at ``path`` in a ``/proc/self/mountinfo`` text, or None."""
    found = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < 5:
            continue
        sep = fields.index("-")
        if unescape(fields[4]) != path or len(fields) < sep + 3:
            continue
        found = DataMount(
            source=unescape(fields[sep + 2]), fstype=fields[sep + 1], root=unescape(fields[3])
        )
    return found


def usage(path: str = DATA_ROOT) -> dict[str, int]:
    """Size, use and room of the filesystem at ``path``, in bytes (what the engine sees)."""
    st = os.statvfs(path)
    return {
        "total_bytes": st.f_blocks * st.f_frsize,
        "used_bytes": (st.f_blocks - st.f_bfree) * st.f_frsize,
        "free_bytes": st.f_bavail * st.f_frsize,
    }


@dataclass(frozen=True)
class Partition:
    """A partition as the kernel sees it (sysfs), in 512-byte sectors: its disk's kernel
    name, its number, where it starts, how long it is, and how far it may grow (the end of
    its disk, of the next partition, or of what an MBR addresses, down to a whole MiB)."""

    disk: str
    number: int
    start: int
    sectors: int
    limit: int  # the sector it may grow to (exclusive)

    @property
    def room_sectors(self) -> int:
        return self.limit - self.start


def read_int(path: str) -> int:
    with open(path, encoding="ascii") as handle:
        return int(handle.read().strip())


def partition_of(sys_block: str, name: str) -> Partition | None:
    """The partition ``name`` (e.g. ``vda3``) from sysfs, or None when it is a whole disk."""
    here = os.path.realpath(os.path.join(sys_block, name))
    if not os.path.exists(os.path.join(here, "partition")):
        return None
    disk_dir = os.path.dirname(here)
    start = read_int(os.path.join(here, "start"))
    limit = min(read_int(os.path.join(disk_dir, "size")), MBR_MAX_SECTORS)
    for entry in os.listdir(disk_dir):  # a partition after this one bounds it
        other = os.path.join(disk_dir, entry)
        if entry != name and os.path.exists(os.path.join(other, "partition")):
            other_start = read_int(os.path.join(other, "start"))
            if other_start > start:
                limit = min(limit, other_start)
    return Partition(
        disk=os.path.basename(disk_dir),
        number=read_int(os.path.join(here, "partition")),
        start=start,
        sectors=read_int(os.path.join(here, "size")),
        limit=limit // ALIGN_SECTORS * ALIGN_SECTORS,
    )


def set_mbr_length(disk: str, part: Partition, sectors: int) -> bool:
    """Write ``sectors`` as the length of ``part``'s entry in the MBR of the disk device
    ``disk`` (synced); False when it says so already. Raises :class:`StorageError` where the
    table is not an MBR holding that partition where the kernel sees it."""
    if not 1 <= part.number <= 4:
        raise StorageError("not_mbr", f"partition {part.number} of {disk} is not a primary one")
    offset = MBR_TABLE_OFFSET + (part.number - 1) * MBR_ENTRY_SIZE
    fd = os.open(disk, os.O_RDWR)
    try:
        sector0 = os.pread(fd, SECTOR, 0)
        if len(sector0) < SECTOR or sector0[510:512] != MBR_SIGNATURE:
            raise StorageError("not_mbr", f"{disk} has no MBR partition table")
        entry = sector0[offset : offset + MBR_ENTRY_SIZE]
        start, length = struct.unpack("<II", entry[8:16])
        if entry[4] == TYPE_GPT_PROTECTIVE or start != part.start:
            raise StorageError(
                "not_mbr",
                f"the MBR of {disk} does not hold partition {part.number} at sector "
                f"{part.start} (a GPT disk, or a table changed behind the kernel's back)",
            )
        if length == sectors:
            return False
        os.pwrite(fd, struct.pack("<I", sectors), offset + 12)
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


def is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


class DataStorage:
    """The data filesystem: its usage, and growing it into a grown disk."""

    def __init__(
        self,
        children: ChildProcesses,
        path: str = DATA_ROOT,
        mountinfo: str = "/proc/self/mountinfo",
        sys_block: str = "/sys/class/block",
        sleep: Callable[[float], None] = time.sleep,
        is_block: Callable[[str], bool] = is_block_device,
        dev_dir: str = "/dev",
    ) -> None:
        self._is_block = is_block
        self.dev_dir = dev_dir
        self.children = children
        self.path = path
        self.mountinfo = mountinfo
        self.sys_block = sys_block
        self._sleep = sleep

    def usage(self) -> dict[str, int]:
        return usage(self.path)

    def device(self) -> tuple[str, str] | None:
        """(device node, kernel name) of the ext4 filesystem mounted whole at the data path;
        None when the data is not on a block device of its own."""
        try:
            with open(self.mountinfo, encoding="utf-8") as handle:
                mount = find_mount(handle.read(), self.path)
        except OSError:
            return None
        if mount is None or mount.root != "/" or mount.fstype != "ext4":
            return None
        if not self._is_block(mount.source):
            return None
        return mount.source, os.path.basename(os.path.realpath(mount.source))

    def device_bytes(self, name: str) -> int:
        with open(f"{self.sys_block}/{name}/size", encoding="ascii") as handle:
            return int(handle.read().strip()) * SECTOR

    def grow_partition(self, part: Partition, size_bytes: int) -> None:
        """Grow the data partition to ``size_bytes`` (its MBR entry, then the kernel's view
        of it), online. Idempotent: a partition that size or larger is left as it is.
        Raises :class:`StorageError` (``no_room_on_disk`` past the end of its disk)."""
        want = -(-size_bytes // SECTOR)
        if part.sectors >= want:
            return
        if want > part.room_sectors:
            raise StorageError(
                "no_room_on_disk",
                f"the data partition {part.number} of /dev/{part.disk} can grow to "
                f"{part.room_sectors * SECTOR} bytes at most (the end of its disk), not "
                f"{size_bytes}",
            )
        disk = f"{self.dev_dir}/{part.disk}"
        set_mbr_length(disk, part, want)
        argv = ["resizepart", disk, str(part.number), str(want)]
        try:
            done = self.children.run(argv, timeout=60.0)
        except (OSError, EngineError) as exc:
            raise StorageError("resize_failed", f"resizepart {disk}: {exc}") from exc
        if done.returncode != 0:
            output = (done.stderr or b"").decode(errors="replace").strip()[-400:]
            raise StorageError(
                "resize_failed", f"resizepart {disk} exited with {done.returncode}: {output}"
            )

    def grow(self, size_bytes: int, wait: float = DEVICE_WAIT_S) -> dict[str, object]:
        """Grow the data filesystem to fill its disk, once the kernel sees the disk at
        ``size_bytes`` or more (waiting up to ``wait`` s); a data partition is grown to that
        size first (:meth:`grow_partition`). Idempotent: a filesystem that fills its disk
        already is left as it is. Raises :class:`StorageError`."""
        found = self.device()
        if found is None:
            return {
                "grown": False,
                "reason": "the data is not on a disk of its own: nothing to grow in the guest",
                **self.usage(),
            }
        node, name = found
        part = partition_of(self.sys_block, name)
        if part is not None:
            self.grow_partition(part, size_bytes)
        deadline = time.monotonic() + wait
        seen = self.device_bytes(name)
        while seen < size_bytes:
            if time.monotonic() >= deadline:
                raise StorageError(
                    "device_not_grown",
                    f"the data disk {node} has {seen} bytes, not the {size_bytes} asked for",
                )
            self._sleep(0.2)
            seen = self.device_bytes(name)
        try:
            done = self.children.run(["resize2fs", node], timeout=RESIZE_TIMEOUT_S)
        except (OSError, EngineError) as exc:
            raise StorageError("resize_failed", f"resize2fs {node}: {exc}") from exc
        if done.returncode != 0:
            output = (done.stderr or b"").decode(errors="replace").strip()[-400:]
            raise StorageError(
                "resize_failed", f"resize2fs {node} exited with {done.returncode}: {output}"
            )
        answer: dict[str, object] = {"grown": True, "device": node, "device_bytes": seen}
        if part is not None:
            answer["max_bytes"] = part.room_sectors * SECTOR
        return {**answer, **self.usage()}
