"""The deploy ramdisk and the per-deploy ISO that boots it on a node.

Shared by every recipe, the deploy ramdisk is cached beside the images, content-addressed
by its inputs (kernel, modules, busybox, the agent script)::

    deploy-<hash16>.vmlinuz           a Debian cloud kernel (the recipe rootfs's or the host's)
    deploy-<hash16>.initrd.gz         busybox-static, util-linux's blkdiscard (the clean's
                                      zeroout) with its libraries, the kernel modules for
                                      virtio/SCSI/NVMe disks, NICs and vfat, and the deploy
                                      agent as /init

The deploy ISO is made **per deploy** (:func:`build_deploy_iso`): isolinux booting the
cached kernel and ramdisk with ``onep.deploy_url=URL`` (the per-deploy token inside) on the
kernel command line. It is ~20 MB and takes well under a second with xorriso, so the node
needs no other way to learn its instructions (no DHCP options, no fixed URL the platform
would have to multiplex by port); this is how Ironic does virtual-media deploys too.

The agent and its protocol are in baremetal/deploy_agent.py; the image it writes and the
disk layout are in images/wholedisk.py.
"""

from __future__ import annotations

import gzip
import hashlib
import ipaddress
import lzma
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from oneplatform.baremetal import deploy_agent
from oneplatform.baremetal.deploy_agent import DEPLOY_MODULES, check_url
from oneplatform.errors import ImageBuildError
from oneplatform.images.builder import (
    Progress,
    cache_lock,
    fsync_dir,
    require_free,
    run_tool,
    version_key,
)
from oneplatform.images.wholedisk import (
    LDLINUX_C32,
    MiB,
    labelled_progress,
    syslinux_file,
)

# Debian's path (package isolinux).
ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")
DEPLOY_FORMAT = "onep-deploy-ramdisk/1"
DEPLOY_CMDLINE = "console=tty0 console=ttyS0,115200 quiet"


@dataclass(frozen=True)
class DeployRamdisk:
    """The deploy ISO's kernel and initramfs, cached and shared by every deploy."""

    kernel: Path
    initrd: Path
    kernel_version: str


# --- the deploy ramdisk and ISO --------------------------------------------------------------


@dataclass(frozen=True)
class _KernelFiles:
    version: str
    kernel: bytes
    modules: dict[str, bytes]  # path under lib/modules/VERSION -> contents (.ko)
    modules_dep: str
    missing: tuple[str, ...]  # wanted modules this kernel does not have (or has built in)


def build_deploy_ramdisk(
    cache_dir: Path, *, kernel_source: Path | None = None, progress: Progress | None = None
) -> DeployRamdisk:
    """The deploy kernel and initramfs, cached by the hash of everything in them.

    ``kernel_source`` is a recipe's rootfs tarball (its /boot/vmlinuz-* and modules: the
    image's own kernel), or None for the host's newest /boot/vmlinuz-* with its
    /lib/modules (Debian's linux-image-cloud-amd64). Needs the host's busybox-static.
    Returns at once (after hashing its inputs) when cached.
    """
    files = _kernel_files(kernel_source)
    busybox = _static_busybox()
    script = deploy_agent.agent_script()
    tools = host_program(deploy_agent.ZERO_TOOL)
    key = _ramdisk_key(files, busybox, script, tools)
    kernel = cache_dir / f"deploy-{key[:16]}.vmlinuz"
    initrd = cache_dir / f"deploy-{key[:16]}.initrd.gz"
    ramdisk = DeployRamdisk(kernel, initrd, files.version)
    if kernel.is_file() and initrd.is_file():
        return ramdisk
    cache_dir.mkdir(parents=True, exist_ok=True)
    with cache_lock(cache_dir / f".deploy-{key[:16]}.lock"):
        if kernel.is_file() and initrd.is_file():
            return ramdisk
        require_free(cache_dir, 256 * MiB, "for the deploy ramdisk")
        say = labelled_progress(progress, "deploy")
        if files.missing:
            say(f"kernel {files.version} lacks modules: {' '.join(files.missing)}")
        archive = gzip.compress(_initramfs(files, busybox, script, tools), 9)
        for path, data in ((kernel, files.kernel), (initrd, archive)):
            part = path.with_name(f".{path.name}.{os.getpid()}.part")
            try:
                part.write_bytes(data)
                part.chmod(0o644)
                os.replace(part, path)
            finally:
                part.unlink(missing_ok=True)
        fsync_dir(cache_dir)
        say(
            f"deploy ramdisk {initrd.name}: {len(archive) / MiB:.1f} MiB, "
            f"{len(files.modules)} modules, kernel {files.version}"
        )
    return ramdisk


_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def network_args(mac: str, address: str) -> str:
    """The kernel arguments that make the deploy agent bring up the NIC with ``mac`` at
    ``address`` (ADDRESS/PREFIX) and nothing else: both checked, never passed through."""
    if not _MAC.fullmatch(mac):
        raise ValueError(f"provisioning MAC {mac!r} is not a lower-case MAC address")
    interface = ipaddress.IPv4Interface(address)  # raises ValueError
    return f"{deploy_agent.CMDLINE_MAC}={mac} {deploy_agent.CMDLINE_IP}={interface.with_prefixlen}"


def isolinux_cfg(deploy_url: str, network: str = "") -> str:
    """The deploy ISO's boot menu: one entry, no prompt, the deploy URL (and the node's
    provisioning NIC, :func:`network_args`) on the cmdline."""
    check_url(deploy_url, "deploy_url")
    extra = f" {network}" if network else ""
    return (
        "SERIAL 0 115200\n"
        "DEFAULT deploy\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "LABEL deploy\n"
        "  KERNEL /deploy/vmlinuz\n"
        "  INITRD /deploy/initrd.gz\n"
        f"  APPEND {DEPLOY_CMDLINE} {deploy_agent.CMDLINE_KEY}={deploy_url}{extra}\n"
    )


def build_deploy_iso(
    cache_dir: Path,
    deploy_url: str,
    out_path: Path,
    *,
    network: str = "",
    kernel_source: Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """Make the per-deploy ISO at ``out_path`` (mode 0600: the URL holds the deploy token);
    ``network`` is :func:`network_args`' for the node, or empty for the agent's defaults.

    Reuses the cached deploy ramdisk (built first if needed, see
    :func:`build_deploy_ramdisk`); the ISO itself takes well under a second. Replaces
    ``out_path`` atomically. Needs xorriso and Debian's isolinux and syslinux-common.
    """
    cfg = isolinux_cfg(deploy_url, network)
    xorriso = shutil.which("xorriso")
    if xorriso is None:
        raise ImageBuildError("xorriso is not installed (Debian package xorriso)")
    isolinux = syslinux_file(ISOLINUX_BIN, "isolinux")
    ldlinux = syslinux_file(LDLINUX_C32, "syslinux-common")
    ramdisk = build_deploy_ramdisk(cache_dir, kernel_source=kernel_source, progress=progress)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    require_free(out_path.parent, 64 * MiB, "for a deploy ISO")
    stage = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=out_path.parent))
    part = stage / "deploy.iso"
    try:
        boot = stage / "isolinux"
        boot.mkdir()
        shutil.copyfile(isolinux, boot / "isolinux.bin")  # xorriso patches its boot table
        shutil.copyfile(ldlinux, boot / "ldlinux.c32")
        (boot / "isolinux.cfg").write_text(cfg, encoding="ascii")
        argv = [
            xorriso, "-as", "mkisofs", "-quiet", "-R", "-V", "ONEP_DEPLOY", "-o", str(part),
            "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
            "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
            "-graft-points",
            f"/isolinux={_graft(boot)}",
            f"/deploy/vmlinuz={_graft(ramdisk.kernel)}",
            f"/deploy/initrd.gz={_graft(ramdisk.initrd)}",
        ]  # fmt: skip
        run_tool(argv, labelled_progress(progress, "deploy"))
        part.chmod(0o600)
        os.replace(part, out_path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out_path


def _graft(path: Path) -> str:
    """A path for an xorriso graft point: '=' and '\\' are escaped with a backslash."""
    return str(path).replace("\\", "\\\\").replace("=", "\\=")


def _ramdisk_key(files: _KernelFiles, busybox: bytes, script: str, tools: dict[str, bytes]) -> str:
    digest = hashlib.sha256(DEPLOY_FORMAT.encode())
    parts = [files.version.encode(), files.kernel, busybox, script.encode()]
    for name in sorted(tools):
        parts += [name.encode(), tools[name]]
    for name in sorted(files.modules):
        parts += [name.encode(), files.modules[name]]
    parts.append(files.modules_dep.encode())
    for part in parts:
        digest.update(struct.pack("<Q", len(part)))
        digest.update(part)
    return digest.hexdigest()


def _kernel_files(source: Path | None) -> _KernelFiles:
    if source is None:
        return _host_kernel_files()
    try:
        with tarfile.open(source) as tar:
            return _tar_kernel_files(tar, source.name)
    except (OSError, tarfile.TarError) as exc:
        raise ImageBuildError(f"cannot read the kernel from {source}: {exc}") from exc


def _host_kernel_files() -> _KernelFiles:
    versions = [
        kernel.name.removeprefix("vmlinuz-")
        for kernel in Path("/boot").glob("vmlinuz-*")
        if (Path("/lib/modules") / kernel.name.removeprefix("vmlinuz-") / "modules.dep").is_file()
    ]
    if not versions:
        raise ImageBuildError(
            "the host has no /boot/vmlinuz-* with its /lib/modules: install "
            "linux-image-cloud-amd64, or build the deploy ramdisk from a recipe's rootfs"
        )
    version = max(versions, key=version_key)
    moddir = Path("/lib/modules") / version
    dep = (moddir / "modules.dep").read_text()
    paths, missing = module_closure(dep, DEPLOY_MODULES)
    modules = {path: (moddir / path).read_bytes() for path in paths}
    kernel = (Path("/boot") / f"vmlinuz-{version}").read_bytes()
    return _decompressed(_KernelFiles(version, kernel, modules, dep, missing))


def _tar_kernel_files(tar: tarfile.TarFile, source: str) -> _KernelFiles:
    members = {member.name.removeprefix("./"): member for member in tar.getmembers()}
    versions = []
    for name in members:
        if name.startswith("boot/vmlinuz-"):
            version = name.removeprefix("boot/vmlinuz-")
            if _modules_root(members, version) is not None:
                versions.append(version)
    if not versions:
        raise ImageBuildError(f"{source} has no /boot/vmlinuz-* with its modules")
    version = max(versions, key=version_key)
    moddir = _modules_root(members, version)
    assert moddir is not None

    def read(name: str) -> bytes:
        handle = tar.extractfile(members[name])
        if handle is None:
            raise ImageBuildError(f"{source}: {name} is not a regular file")
        return handle.read()

    dep = read(f"{moddir}/modules.dep").decode()
    paths, missing = module_closure(dep, DEPLOY_MODULES)
    modules = {path: read(f"{moddir}/{path}") for path in paths}
    kernel = read(f"boot/vmlinuz-{version}")
    return _decompressed(_KernelFiles(version, kernel, modules, dep, missing))


def _modules_root(members: dict[str, tarfile.TarInfo], version: str) -> str | None:
    for prefix in ("usr/lib/modules", "lib/modules"):
        if f"{prefix}/{version}/modules.dep" in members:
            return f"{prefix}/{version}"
    return None


def module_name(path: str) -> str:
    """kernel/drivers/block/virtio_blk.ko(.xz) -> virtio_blk ('-' read as '_')."""
    name = path.rsplit("/", 1)[-1]
    return name.split(".ko", 1)[0].replace("-", "_")


def module_closure(modules_dep: str, wanted: Iterable[str]) -> tuple[list[str], tuple[str, ...]]:
    """The module paths to ship for ``wanted`` with their dependencies (from modules.dep),
    and the wanted names the kernel has no module for."""
    deps: dict[str, list[str]] = {}
    for line in modules_dep.splitlines():
        module, sep, rest = line.partition(":")
        if sep:
            deps[module.strip()] = rest.split()
    by_name = {module_name(path): path for path in deps}
    chosen: list[str] = []
    missing: list[str] = []

    def visit(path: str) -> None:
        if path in chosen:
            return
        for dep in deps.get(path, []):
            visit(dep)
        chosen.append(path)

    for name in wanted:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            missing.append(name)
        else:
            visit(path)
    return chosen, tuple(missing)


def _decompressed(files: _KernelFiles) -> _KernelFiles:
    """busybox's modprobe loads plain .ko files: unpack .ko.xz (and say so for .ko.zst)."""
    modules: dict[str, bytes] = {}
    dep = files.modules_dep
    for path, data in files.modules.items():
        if path.endswith(".ko.xz"):
            modules[path.removesuffix(".xz")] = lzma.decompress(data)
            dep = dep.replace(path, path.removesuffix(".xz"))
        elif path.endswith(".ko"):
            modules[path] = data
        else:
            raise ImageBuildError(f"kernel module {path}: only .ko and .ko.xz are supported")
    return _KernelFiles(files.version, files.kernel, modules, dep, files.missing)


def _static_busybox() -> bytes:
    for candidate in (shutil.which("busybox"), "/bin/busybox", "/usr/bin/busybox"):
        if candidate and Path(candidate).is_file():
            data = Path(candidate).read_bytes()
            if is_static_elf(data):
                return data
    raise ImageBuildError(
        "no statically linked busybox on this host: install the Debian package busybox-static"
    )


def host_program(path: str) -> dict[str, bytes]:
    """A dynamically linked program of this host with the libraries ``ldd`` names, as
    ramdisk paths (no leading /) -> contents; empty when the host lacks it (the agent then
    falls back to busybox)."""
    if not os.access(path, os.X_OK):
        return {}
    try:
        out = subprocess.run(
            ["ldd", path], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    shipped = {path.lstrip("/"): Path(path).read_bytes()}
    for lib in re.findall(r"(?:^|\s)(/\S+)\s+\(0x", out, re.M):
        shipped[lib.lstrip("/")] = Path(lib).read_bytes()  # a symlink's target's bytes
    return shipped


def is_static_elf(data: bytes) -> bool:
    """A 64-bit little-endian ELF executable without an interpreter (PT_INTERP)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for index in range(phnum):
        (kind,) = struct.unpack_from("<I", data, phoff + index * phentsize)
        if kind == 3:  # PT_INTERP: dynamically linked
            return False
    return True


# --- the initramfs (newc cpio, written here: no cpio tool needed) ----------------------------

S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000


def _initramfs(
    files: _KernelFiles, busybox: bytes, script: str, tools: dict[str, bytes] | None = None
) -> bytes:
    moddir = f"lib/modules/{files.version}"
    present = [name for name in DEPLOY_MODULES if name not in files.missing]
    shipped = set(files.modules)
    dep_lines = [
        line for line in files.modules_dep.splitlines() if line.partition(":")[0].strip() in shipped
    ]
    regular: dict[str, tuple[int, bytes]] = {
        "init": (0o755, script.encode()),
        "bin/busybox": (0o755, busybox),
        f"{moddir}/modules.dep": (0o644, ("\n".join(dep_lines) + "\n").encode()),
        deploy_agent.MODULES_LIST.lstrip("/"): (0o644, ("\n".join(present) + "\n").encode()),
    }
    for path, data in files.modules.items():
        regular[f"{moddir}/{path}"] = (0o644, data)
    for path, data in (tools or {}).items():
        regular[path] = (0o755, data)
    dirs = {"dev", "proc", "sys", "tmp", "run", "mnt", "sbin", "usr/bin", "usr/sbin"}
    for name in regular:
        parts = name.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    entries: list[tuple[str, int, bytes, int]] = [
        (d, S_IFDIR | 0o755, b"", 0) for d in sorted(dirs)
    ]
    entries.append(("dev/console", S_IFCHR | 0o600, b"", os.makedev(5, 1)))
    entries += [
        ("bin/sh", S_IFLNK | 0o777, b"busybox", 0),
        ("sbin/modprobe", S_IFLNK | 0o777, b"/bin/busybox", 0),
    ]
    entries += [(name, S_IFREG | mode, data, 0) for name, (mode, data) in sorted(regular.items())]
    return cpio_newc(entries)


def cpio_newc(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A newc ("070701") cpio archive of (name, mode, data, rdev) owned by root."""
    out = bytearray()
    trailer = ("TRAILER!!!", 0, b"", 0)
    for inode, (name, mode, data, rdev) in enumerate([*entries, trailer], start=1):
        raw_name = name.encode() + b"\0"
        nlink = 2 if mode & 0o170000 == S_IFDIR else 1
        fields = (
            inode, mode, 0, 0, nlink, 0, len(data), 0, 0,
            os.major(rdev), os.minor(rdev), len(raw_name), 0,
        )  # fmt: skip
        header = b"070701" + b"".join(f"{value:08x}".encode() for value in fields)
        out += header + raw_name + b"\0" * (-(len(header) + len(raw_name)) % 4)
        out += data + b"\0" * (-len(data) % 4)
    return bytes(out)
