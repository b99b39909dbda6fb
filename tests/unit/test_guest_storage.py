"""The guest's data storage: finding the data disk, and growing its filesystem."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from oneplatform.guest.processes import ChildProcesses
from oneplatform.guest.storage import DataStorage, StorageError, find_mount
from oneplatform.images.wholedisk import TYPE_FAT16_LBA, TYPE_LINUX, Span, mbr, mbr_entry

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


# -- bare metal: the data partition grows first ------------------------------------------------
BM_MOUNTINFO = (
    "22 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw\n"
    "31 22 254:3 / /var/lib/oneplatform rw,noatime - ext4 /dev/vda3 rw\n"
)
MIB_SECTORS = 2048
DISK_MIB = 64  # the node's disk
DATA_START = 24 * MIB_SECTORS  # after the image's two partitions


class PartitionChildren(FakeChildren):
    """resizepart as the kernel does it: the partition's length in sysfs changes."""

    def __init__(self, sysfs_part: Path, code: int = 0) -> None:
        super().__init__(code)
        self.sysfs_part = sysfs_part

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        if argv[0] == "resizepart" and self.code == 0:
            (self.sysfs_part / "size").write_text(argv[3])
        return super().run(argv, **kwargs)


def _node_storage(tmp_path: Path, data_mib: int, code: int = 0) -> tuple[DataStorage, Path]:
    """A node's disk (a file holding a real MBR of the whole-disk layout: root, config and
    a data partition of ``data_mib``) and its sysfs, with the data partition mounted."""
    info = tmp_path / "mountinfo"
    info.write_text(BM_MOUNTINFO.replace("/var/lib/oneplatform", str(tmp_path)))
    disk_dir = tmp_path / "devices" / "vda"
    spans = {
        1: Span(MIB_SECTORS, 20 * MIB_SECTORS),
        2: Span(21 * MIB_SECTORS, 3 * MIB_SECTORS),
        3: Span(DATA_START, data_mib * MIB_SECTORS),
    }
    for number, span in spans.items():
        part = disk_dir / f"vda{number}"
        part.mkdir(parents=True)
        for name, value in (("partition", number), ("start", span.start), ("size", span.sectors)):
            (part / name).write_text(f"{value}\n")
    (disk_dir / "size").write_text(str(DISK_MIB * MIB_SECTORS))
    block = tmp_path / "block"
    block.mkdir()
    for name in ("vda", "vda1", "vda2", "vda3"):
        target = disk_dir if name == "vda" else disk_dir / name
        (block / name).symlink_to(target)
    dev = tmp_path / "dev"
    dev.mkdir()
    table = mbr(
        b"",
        0x1234,
        [
            mbr_entry(spans[1], TYPE_LINUX, active=True),
            mbr_entry(spans[2], TYPE_FAT16_LBA),
            mbr_entry(spans[3], TYPE_LINUX),
        ],
    )
    with (dev / "vda").open("wb") as handle:
        handle.write(table)
        handle.truncate(DISK_MIB * 1024 * 1024)
    storage = DataStorage(
        PartitionChildren(disk_dir / "vda3", code),
        path=str(tmp_path),
        mountinfo=str(info),
        sys_block=str(block),
        sleep=lambda _: None,
        is_block=lambda path: path == "/dev/vda3",
        dev_dir=str(dev),
    )
    return storage, dev / "vda"


def _data_entry(disk: Path) -> tuple[int, int]:
    raw = disk.read_bytes()[446 + 32 : 446 + 48]
    start, sectors = struct.unpack("<II", raw[8:16])
    return start, sectors


def test_a_nodes_data_partition_grows_in_its_mbr_and_the_kernel_then_its_filesystem(
    tmp_path: Path,
) -> None:
    storage, disk = _node_storage(tmp_path, data_mib=16)
    before = disk.read_bytes()
    answer = storage.grow(32 * 1024 * 1024)
    assert _data_entry(disk) == (DATA_START, 32 * MIB_SECTORS)
    after = disk.read_bytes()  # only the data partition's length changed
    changed = [i for i in range(len(before)) if before[i] != after[i]]
    assert changed and all(446 + 32 + 12 <= i < 446 + 48 for i in changed), changed
    calls = storage.children.calls  # type: ignore[attr-defined]
    assert calls == [
        ["resizepart", str(disk), "3", str(32 * MIB_SECTORS)],
        ["resize2fs", "/dev/vda3"],
    ]
    assert answer["grown"] is True and answer["device_bytes"] == 32 * 1024 * 1024
    # the rest of the disk, to its last MiB, is the most it can be
    assert answer["max_bytes"] == (DISK_MIB * MIB_SECTORS - DATA_START) * 512
    again = storage.grow(32 * 1024 * 1024)  # idempotent: the partition is that size
    assert again["grown"] is True and calls[-2:] == [["resize2fs", "/dev/vda3"]] * 2


def test_a_nodes_data_partition_never_grows_past_its_disk(tmp_path: Path) -> None:
    storage, disk = _node_storage(tmp_path, data_mib=16)
    room = DISK_MIB - DATA_START // MIB_SECTORS  # 40 MiB
    with pytest.raises(StorageError) as err:
        storage.grow((room + 1) * 1024 * 1024)
    assert err.value.code == "no_room_on_disk" and "at most" in str(err.value)
    assert _data_entry(disk) == (DATA_START, 16 * MIB_SECTORS)  # nothing changed
    assert storage.children.calls == []  # type: ignore[attr-defined]
    answer = storage.grow(room * 1024 * 1024)  # to the disk's last MiB: fine
    assert answer["device_bytes"] == room * 1024 * 1024


def test_a_failed_resizepart_is_said_and_a_retry_completes_it(tmp_path: Path) -> None:
    storage, disk = _node_storage(tmp_path, data_mib=16, code=1)
    with pytest.raises(StorageError) as err:
        storage.grow(24 * 1024 * 1024)
    assert err.value.code == "resize_failed" and "resizepart" in str(err.value)
    assert _data_entry(disk) == (DATA_START, 24 * MIB_SECTORS)  # the table was written
    storage.children.code = 0  # type: ignore[attr-defined]
    assert storage.grow(24 * 1024 * 1024)["device_bytes"] == 24 * 1024 * 1024


def test_a_table_that_does_not_hold_the_partition_is_refused(tmp_path: Path) -> None:
    storage, disk = _node_storage(tmp_path, data_mib=16)
    with disk.open("r+b") as handle:  # the entry names another start than the kernel's
        handle.seek(446 + 32 + 8)
        handle.write(struct.pack("<I", DATA_START + MIB_SECTORS))
    with pytest.raises(StorageError) as err:
        storage.grow(32 * 1024 * 1024)
    assert err.value.code == "not_mbr"
    assert storage.children.calls == []  # type: ignore[attr-defined]
