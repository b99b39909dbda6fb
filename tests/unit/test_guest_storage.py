"""The guest's data storage: finding the data disk, and growing its filesystem."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from oneplatform.guest.processes import ChildProcesses
from oneplatform.guest.storage import DataStorage, StorageError, find_mount

VM_MOUNTINFO = (
    "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
    "31 22 254:16 / /var/lib/oneplatform rw,noatime - ext4 /dev/vdb rw\n"
)
CONTAINER_MOUNTINFO = (
    "600 550 0:50 / / rw - overlay overlay rw\n"
    "610 600 8:1 /var/lib/containers/storage/volumes/onep-x-data/_data "
    "/var/lib/oneplatform rw - ext4 /dev/sda1 rw\n"
)


def test_find_mount_reads_the_data_disk_of_a_vm() -> None:
    mount = find_mount(VM_MOUNTINFO)
    assert mount is not None
    assert (mount.source, mount.fstype, mount.root) == ("/dev/vdb", "ext4", "/")


def test_a_container_volume_is_a_bind_mount_of_a_host_directory() -> None:
    mount = find_mount(CONTAINER_MOUNTINFO)
    assert mount is not None and mount.root != "/"
    assert find_mount(VM_MOUNTINFO, "/nowhere") is None


class FakeChildren(ChildProcesses):
    def __init__(self, code: int = 0) -> None:
        super().__init__()
        self.calls: list[list[str]] = []
        self.code = code

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        self.calls.append(argv)
        return subprocess.CompletedProcess(argv, self.code, b"", b"no room")


def _storage(tmp_path: Path, mountinfo: str, sectors: list[int], code: int = 0) -> DataStorage:
    """A data path at ``tmp_path`` mounted as ``mountinfo`` says, whose disk the kernel sees
    at ``sectors`` (one more each time the grow waits)."""
    info = tmp_path / "mountinfo"
    info.write_text(mountinfo.replace("/var/lib/oneplatform", str(tmp_path)))
    block = tmp_path / "block" / "vdb"
    block.mkdir(parents=True)
    sizes = iter(sectors)

    def sleep(_: float) -> None:
        (block / "size").write_text(str(next(sizes)))

    (block / "size").write_text(str(next(sizes)))
    return DataStorage(
        FakeChildren(code),
        path=str(tmp_path),
        mountinfo=str(info),
        sys_block=str(tmp_path / "block"),
        sleep=sleep,
        is_block=lambda path: path in ("/dev/vdb", "/dev/sda1"),
    )


def test_grow_waits_for_the_kernel_to_see_the_disk_then_runs_resize2fs(tmp_path: Path) -> None:
    storage = _storage(tmp_path, VM_MOUNTINFO, [2 * 1024 * 1024, 2 * 1024 * 1024, 4 * 1024 * 1024])
    answer = storage.grow(2 * 1024**3)
    assert answer["grown"] is True and answer["device_bytes"] == 2 * 1024**3
    calls = storage.children.calls  # type: ignore[attr-defined]
    assert len(calls) == 1 and calls[0][0] == "resize2fs"
    assert int(str(answer["total_bytes"])) > 0


def test_grow_fails_clearly_when_the_disk_never_grows(tmp_path: Path) -> None:
    storage = _storage(tmp_path, VM_MOUNTINFO, [1024] * 1000)
    with pytest.raises(StorageError) as err:
        storage.grow(2 * 1024**3, wait=0.0)
    assert err.value.code == "device_not_grown"
    assert storage.children.calls == []  # type: ignore[attr-defined]


def test_grow_reports_a_failed_resize2fs(tmp_path: Path) -> None:
    storage = _storage(tmp_path, VM_MOUNTINFO, [4 * 1024 * 1024], code=1)
    with pytest.raises(StorageError) as err:
        storage.grow(2 * 1024**3)
    assert err.value.code == "resize_failed" and "no room" in str(err.value)


def test_a_container_volume_has_nothing_to_grow_in_the_guest(tmp_path: Path) -> None:
    storage = _storage(tmp_path, CONTAINER_MOUNTINFO, [1024])
    answer = storage.grow(2 * 1024**3)
    assert answer["grown"] is False and "not on a disk of its own" in str(answer["reason"])
    assert storage.children.calls == []  # type: ignore[attr-defined]
