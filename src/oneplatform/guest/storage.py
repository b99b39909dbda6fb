"""The data disk as the guest sees it: its size and use, and growing its filesystem.

The platform grows the disk underneath (a VM's data disk grows with libvirt's block resize
while the guest runs; virtio-blk tells the kernel the new capacity); the agent then grows the
ext4 filesystem mounted at :data:`~.contract.DATA_ROOT` into it with ``resize2fs``, online.
Where the data is not a disk of its own (a container's volume is a directory of the host's
storage, bind-mounted), there is no filesystem of ours to grow: the answer says so, with the
usage the guest sees.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from .contract import DATA_ROOT
from .processes import ChildProcesses, EngineError

RESIZE_TIMEOUT_S = 600.0  # resize2fs of a large filesystem under TCG
DEVICE_WAIT_S = 30.0  # for the kernel to see the disk's new capacity
SECTOR = 512  # /sys/class/block/*/size counts 512-byte sectors


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
    ) -> None:
        self._is_block = is_block
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

    def grow(self, size_bytes: int, wait: float = DEVICE_WAIT_S) -> dict[str, object]:
        """Grow the data filesystem to fill its disk, once the kernel sees the disk at
        ``size_bytes`` or more (waiting up to ``wait`` s). Idempotent: a filesystem that
        fills its disk already is left as it is. Raises :class:`StorageError`."""
        found = self.device()
        if found is None:
            return {
                "grown": False,
                "reason": "the data is not on a disk of its own: nothing to grow in the guest",
                **self.usage(),
            }
        node, name = found
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
        return {"grown": True, "device": node, "device_bytes": seen, **self.usage()}
