"""Build a recipe into a root filesystem tarball with mmdebstrap, cached by content hash,
and export that tarball to the formats the compute types need.

One recipe, one cache key, several artifacts, all beside each other in the cache::

    <name>-<hash16>.tar       root filesystem (mmdebstrap); Podman imports it as an OCI image
    <name>-<hash16>.qcow2     VM root disk: ext4 labelled onep-root, compressed qcow2
    <name>-<hash16>.vmlinuz   the image's own kernel, for direct kernel boot
    <name>-<hash16>.initrd    and its initramfs

The cache is content-addressed: each file exists only when its build finished (it is
written under a temporary name and renamed), so a crash never leaves a half-written entry
that a later call would trust.

The VM contract (the libvirt driver must match it): boot ``kernel`` + ``initrd`` with
:data:`VM_CMDLINE`; attach every disk as virtio-blk with a serial the guest finds it by:
:data:`ROOT_SERIAL` (a copy-on-write overlay of ``disk``), :data:`CONFIG_SERIAL` (the
config drive: ISO 9660 or vfat, read-only, with ``bundle.json`` at its root and optionally
a ``hostname`` file) and :data:`DATA_SERIAL` (the data disk: formatted ext4 by the guest
when blank, mounted at /var/lib/oneplatform). The guest configures the first network
interface as 10.0.2.15/24 via 10.0.2.2 (QEMU user networking; ``onep.ip=ADDR/LEN`` and
``onep.gw=ADDR`` appended to the command line override it). Give the VM a virtio-rng
device too: without one, the guest's first blocking getrandom() waits ~1 s under TCG.
Ctrl-Alt-Del (libvirt sendKey) and the ACPI power button both make the guest stop the
engine, unmount the data disk and power off.
"""

from __future__ import annotations

import collections
import fcntl
import math
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from oneplatform.errors import ImageBuildError
from oneplatform.guest import contract
from oneplatform.images.artifacts import ImageArtifact, VmImage
from oneplatform.images.recipes import Recipe

Progress = Callable[[str], None]

MIN_FREE_BYTES = 2 * 1024**3  # a PostgreSQL rootfs is ~0.5 GB, plus mmdebstrap's chroot
OUTPUT_TAIL_LINES = 40
MiB = 1024**2

# --- the VM format's contract with the compute driver (see the module docstring); the
# serials and labels are the guest contract's
ROOT_LABEL = contract.ROOT_LABEL
ROOT_SERIAL = contract.ROOT_SERIAL
CONFIG_SERIAL = contract.CONFIG_SERIAL
CONFIG_LABEL = contract.CONFIG_LABEL  # volume label of the config drive (informational)
DATA_SERIAL = contract.DATA_SERIAL
DATA_LABEL = contract.DATA_LABEL
VM_INIT = "/usr/local/sbin/onep-vm-init"
# Where onep-vm-init finds the image's environment and command (written at build time).
ENTRYPOINT_PATH = "/usr/local/lib/oneplatform/entrypoint.sh"
# net.ifnames=0: the kernel's own eth0 (no udev renames it; the init takes any name anyway).
# panic=-1: reboot at once on a panic instead of hanging.
VM_CMDLINE = f"root=LABEL={ROOT_LABEL} rw console=ttyS0 init={VM_INIT} net.ifnames=0 panic=-1"
# The root filesystem gets this share of free space over its content, plus VM_DISK_SLACK.
VM_DISK_GROWTH = 1.25
VM_DISK_SLACK = 512 * MiB
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Keep images small: no documentation, manual pages or translations.
DPKG_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
)


def rootfs_path(recipe: Recipe, cache_dir: Path) -> Path:
    """Where the recipe's tarball is (or will be) cached; the hash is in the name."""
    return cache_dir / f"{recipe.name}-{recipe.content_hash()[:16]}.tar"


def image_ref(recipe: Recipe) -> str:
    """The local OCI reference the recipe's image is imported under."""
    return f"localhost/oneplatform/{recipe.name}:{recipe.content_hash()[:12]}"


def artifact_for(recipe: Recipe, cache_dir: Path) -> ImageArtifact:
    """The artifact a host needs. ``vm`` is set when the VM format is in the cache.

    Does no I/O beyond hashing the recipe's files and looking for the VM files.
    """
    return ImageArtifact(
        name=recipe.name,
        ref=image_ref(recipe),
        rootfs=rootfs_path(recipe, cache_dir),
        command=tuple(recipe.command),
        env=dict(recipe.env),
        vm=vm_image_if_built(recipe, cache_dir),
    )


def vm_image_path(recipe: Recipe, cache_dir: Path) -> VmImage:
    """Where the recipe's VM format is (or will be) cached; no I/O beyond hashing."""
    stem = rootfs_path(recipe, cache_dir).stem
    return VmImage(
        disk=cache_dir / f"{stem}.qcow2",
        kernel=cache_dir / f"{stem}.vmlinuz",
        initrd=cache_dir / f"{stem}.initrd",
        cmdline=VM_CMDLINE,
    )


def vm_image_if_built(recipe: Recipe, cache_dir: Path) -> VmImage | None:
    """The recipe's VM format when all of its files are in the cache, else None."""
    vm = vm_image_path(recipe, cache_dir)
    return vm if _vm_files_exist(vm) else None


def _vm_files_exist(vm: VmImage) -> bool:
    return all(path.is_file() for path in (vm.disk, vm.kernel, vm.initrd))


def build_rootfs(recipe: Recipe, cache_dir: Path, progress: Progress | None = None) -> Path:
    """Build the recipe's root filesystem tarball; returns at once if it is cached.

    Takes a per-recipe lock so concurrent callers build once. Raises
    :class:`ImageBuildError` when disk space is short or mmdebstrap fails.
    """
    target = rootfs_path(recipe, cache_dir)
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _lock(cache_dir / f".{target.stem}.lock"):
        if target.exists():  # another process finished it while we waited
            return target
        _remove_stale_parts(target)
        _check_free_space(cache_dir)
        part = target.with_name(f".{target.stem}.{os.getpid()}.part.tar")
        try:
            with tempfile.TemporaryDirectory(prefix="onep-recipe-files-") as files:
                argv = mmdebstrap_argv(recipe, part, recipe.local_files(Path(files)))
                _run_mmdebstrap(argv, progress)
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
    return target


# --- the VM format -------------------------------------------------------------------------


def build_vm_image(recipe: Recipe, cache_dir: Path, progress: Progress | None = None) -> VmImage:
    """Export the recipe's root filesystem as a VM root disk, kernel and initrd.

    Builds (or reuses) the cached rootfs tarball first; returns at once when the VM files
    are cached. The tarball is unpacked as root keeping owners and modes, made into an ext4
    filesystem labelled ``onep-root`` (``mkfs.ext4 -d``) on a sparse file, and converted to
    a compressed qcow2. Takes a per-recipe lock; needs root, tar, mkfs.ext4 and qemu-img.
    Raises :class:`ImageBuildError` when any of that fails or disk space is short.
    """
    vm = vm_image_path(recipe, cache_dir)
    if _vm_files_exist(vm):
        return vm
    tarball = build_rootfs(recipe, cache_dir, progress)
    preload = [_built(other, cache_dir, progress) for other in recipe.preloaded()]
    with _lock(cache_dir / f".{tarball.stem}.vm.lock"):
        if _vm_files_exist(vm):  # another process finished it while we waited
            return vm
        tools = _vm_tools()
        if preload:
            tools |= find_tools(("podman",), "a VM image with preloaded images")
        _remove_stale_vm_parts(tarball)
        # The unpacked tree, the raw filesystem and the qcow2 are each about the tar's size.
        size = tarball.stat().st_size + sum(_rootfs_size(image) for image in preload)
        _require_free(cache_dir, 3 * size + VM_DISK_SLACK, "for a VM image")
        work = Path(
            tempfile.mkdtemp(prefix=f".{tarball.stem}.", suffix=VM_WORK_SUFFIX, dir=cache_dir)
        )
        try:
            _export_vm(tarball, work, vm, tools, _say(progress), preload)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return vm


def _built(recipe: Recipe, cache_dir: Path, progress: Progress | None) -> ImageArtifact:
    build_rootfs(recipe, cache_dir, progress)
    return artifact_for(recipe, cache_dir)


def _rootfs_size(image: ImageArtifact) -> int:
    return image.rootfs.stat().st_size if image.rootfs is not None else 0


VM_WORK_SUFFIX = ".vm-build"
# Where a VM image keeps the images of its recipe's ``preload`` (a read-only Podman image
# store its Podman is told about), and the storage configuration that tells it.
PRELOAD_STORE = "/usr/lib/oneplatform/images"
STORAGE_CONF = "/etc/containers/storage.conf"
_STORAGE_CONF_TEXT = f"""\
# Written by the OnePlatform image builder: images preloaded at build time.
[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"

[storage.options]
additionalimagestores = ["{PRELOAD_STORE}"]
"""
# What a build's Podman leaves in the store beside the images and their layers.
_PODMAN_RUN_STATE = ("libpod", "tmp", "mounts", "volumes", "defaultNetworkBackend")
VM_TOOLS = ("tar", "mkfs.ext4", "qemu-img")
# The sbin directories, for a caller whose PATH lacks them (mkfs.ext4 lives there).
_SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"


def _vm_tools() -> dict[str, str]:
    return find_tools(VM_TOOLS, "a VM image")


def find_tools(tools: Sequence[str], purpose: str) -> dict[str, str]:
    """Each tool's path (the sbin directories searched too); needs root, as exports do.

    Raises :class:`ImageBuildError` naming the first missing tool.
    """
    if os.geteuid() != 0:
        raise ImageBuildError(
            f"building {purpose} needs root: the root filesystem is unpacked keeping its owners"
        )
    search = f"{os.environ.get('PATH', os.defpath)}:{_SBIN_PATH}"
    found: dict[str, str] = {}
    for tool in tools:
        path = shutil.which(tool, path=search)
        if path is None:
            raise ImageBuildError(
                f"{tool} is not installed; building {purpose} needs it (run scripts/setup.sh)"
            )
        found[tool] = path
    return found


def _say(progress: Progress | None) -> Progress:
    def say(line: str) -> None:
        if progress is not None:
            progress(f"vm: {line}")

    return say


def _export_vm(
    tarball: Path,
    work: Path,
    vm: VmImage,
    tools: dict[str, str],
    say: Progress,
    preload: Sequence[ImageArtifact] = (),
) -> None:
    started = time.monotonic()
    root = unpack_rootfs(tarball, work / "root", tools, say)
    kernel, initrd = find_kernel(root, tarball.name)
    if preload:
        preload_images(root, preload, tools, say)
    kernel_part = work / "vmlinuz"
    initrd_part = work / "initrd"
    shutil.copyfile(kernel, kernel_part)
    shutil.copyfile(initrd, initrd_part)
    kernel_part.chmod(0o644)
    initrd_part.chmod(0o644)
    say(
        f"kernel {kernel.name} ({kernel.stat().st_size / MiB:.1f} MiB), {initrd.name} "
        f"({initrd.stat().st_size / MiB:.1f} MiB)"
    )

    raw = work / "root.ext4"
    make_root_ext4(root, raw, tools, say)
    shutil.rmtree(root)  # frees its space before the qcow2 is written
    disk_part = work / "disk.qcow2"
    say("converting to compressed qcow2")
    _run_tool(
        [
            tools["qemu-img"],
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-c",
            "-o",
            "compression_type=zstd",
            str(raw),
            str(disk_part),
        ],
        say,
    )
    raw.unlink()
    for part in (kernel_part, initrd_part, disk_part):
        with part.open("rb") as handle:
            os.fsync(handle.fileno())
    # The disk last: the three files count as built only when all of them exist.
    os.replace(kernel_part, vm.kernel)
    os.replace(initrd_part, vm.initrd)
    os.replace(disk_part, vm.disk)
    _fsync_dir(vm.disk.parent)
    say(
        f"{vm.disk.name}: {vm.disk.stat().st_size / MiB:.0f} MiB qcow2, built in "
        f"{time.monotonic() - started:.1f} s"
    )


def preload_images(
    root: Path, images: Sequence[ImageArtifact], tools: dict[str, str], say: Progress
) -> Path:
    """Import ``images`` (their rootfs tarballs, with command and environment) into a Podman
    image store at PRELOAD_STORE inside ``root`` and make it an additional, read-only image
    store of that tree's Podman (STORAGE_CONF): ``podman image exists`` there finds them at
    once and containers run on their layers, with no import on the guest. Made with this
    machine's Podman (``tools["podman"]``), overlay driver, the layout the guest's Podman
    reads; only the images and layers are kept. Returns the store's path."""
    store = root / PRELOAD_STORE.lstrip("/")
    store.mkdir(parents=True)
    # Podman wants a short run root (its sockets' paths); the build's own, removed after.
    runroot = tempfile.mkdtemp(prefix="onep-preload-")
    base = [tools["podman"], "--root", str(store), "--runroot", runroot]
    base += ["--storage-driver", "overlay", "--events-backend", "none"]
    try:
        for image in images:
            if image.rootfs is None or not image.rootfs.is_file():
                raise ImageBuildError(f"cannot preload {image.ref}: its rootfs is missing")
            say(f"preloading {image.ref}")
            argv = [*base, "import", *image.import_changes(), str(image.rootfs), image.ref]
            _run_tool(argv, say)
    finally:
        shutil.rmtree(runroot, ignore_errors=True)
    for name in _PODMAN_RUN_STATE:
        path = store / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    conf = root / STORAGE_CONF.lstrip("/")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(_STORAGE_CONF_TEXT)
    conf.chmod(0o644)
    return store


def unpack_rootfs(tarball: Path, root: Path, tools: dict[str, str], say: Progress) -> Path:
    """Unpack the rootfs tarball into the new directory ``root`` keeping owners and modes.

    ``tools`` comes from :func:`find_tools` (needs ``tar``). Returns ``root``.
    """
    root.mkdir(mode=0o755)
    say(f"unpacking {tarball.name}")
    _run_tool(
        [
            tools["tar"],
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "-xpf",
            str(tarball),
            "-C",
            str(root),
        ],
        say,
    )
    root.chmod(0o755)
    return root


def make_root_ext4(
    root: Path,
    raw: Path,
    tools: dict[str, str],
    say: Progress,
    *,
    growth: float = VM_DISK_GROWTH,
    slack: int = VM_DISK_SLACK,
) -> int:
    """Make ``raw`` (a new sparse file) an ext4 filesystem labelled ``onep-root`` holding
    the tree ``root``, sized ``content * growth + slack``; returns the size in bytes (a
    whole number of MiB). ``tools`` needs ``mkfs.ext4``.
    """
    content, inodes = _tree_usage(root)
    size = math.ceil((content * growth + slack) / MiB) * MiB
    with raw.open("wb") as handle:
        handle.truncate(size)  # sparse: only what mkfs writes takes space
    say(
        f"making the ext4 root filesystem: {content / MiB:.0f} MiB in {inodes} files, "
        f"disk {size / MiB:.0f} MiB"
    )
    _run_tool(
        [
            tools["mkfs.ext4"],
            "-q",
            "-F",
            "-L",
            ROOT_LABEL,
            "-N",
            str(inodes + inodes // 2 + 16384),
            "-d",
            str(root),
            str(raw),
        ],
        say,
    )
    return size


def find_kernel(root: Path, source: str) -> tuple[Path, Path]:
    """The newest /boot/vmlinuz-VERSION that has its /boot/initrd.img-VERSION."""
    boot = root / "boot"
    pairs = []
    for kernel in boot.glob("vmlinuz-*"):
        version = kernel.name.removeprefix("vmlinuz-")
        initrd = boot / f"initrd.img-{version}"
        if kernel.is_file() and initrd.is_file():
            pairs.append((_version_key(version), kernel, initrd))
    if not pairs:
        raise ImageBuildError(
            f"{source} has no /boot/vmlinuz-* with its initrd.img-*: a VM image needs the "
            "recipe to install a kernel and initramfs-tools (e.g. linux-image-cloud-amd64)"
        )
    _, kernel, initrd = max(pairs)
    return kernel, initrd


def _version_key(version: str) -> tuple[tuple[int, str], ...]:
    return tuple(
        (int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"[.\-+~]", version)
    )


def _tree_usage(root: Path) -> tuple[int, int]:
    """(bytes the tree takes in 4 KiB blocks, number of inodes) without following links."""
    block = 4096
    total = 0
    inodes = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            inodes += 1
            st = os.lstat(os.path.join(dirpath, name))
            total += max(1, math.ceil(st.st_size / block)) * block
    return total + block, inodes + 1


def _remove_stale_vm_parts(tarball: Path) -> None:
    """Work directories of an earlier, crashed VM export (we hold the lock)."""
    for stale in tarball.parent.glob(f".{tarball.stem}.*{VM_WORK_SUFFIX}"):
        shutil.rmtree(stale, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mmdebstrap_argv(recipe: Recipe, output: Path, files: Mapping[str, Path]) -> list[str]:
    """The full mmdebstrap command line that builds ``recipe`` into ``output`` (a tar);
    ``files`` says where the recipe's files are on this machine (:meth:`Recipe.local_files`).
    """
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        "--format=tar",
        f"--include={','.join(recipe.packages)}",
    ]
    excludes = (*DPKG_EXCLUDES, *recipe.path_excludes)
    argv += [f"--dpkgopt=path-exclude={pattern}" for pattern in excludes]
    argv += [f"--customize-hook={hook}" for hook in _customize_hooks(recipe, files)]
    argv += [recipe.suite, str(output), *recipe.apt_sources()]
    return argv


def _customize_hooks(recipe: Recipe, files: Mapping[str, Path]) -> list[str]:
    """Shell snippets mmdebstrap runs with the root filesystem directory as ``$1``."""
    hooks = []
    for guest_path, source in sorted(files.items()):
        mode = "0755" if _is_script(source) else "0644"
        hooks.append(
            f'install -D -m {mode} {shlex.quote(str(source))} "$1"{shlex.quote(guest_path)}'
        )
    hooks.append(_entrypoint_hook(recipe))
    hooks += [f'chroot "$1" /bin/sh -c {shlex.quote(cmd)}' for cmd in recipe.customize]
    return hooks


def entrypoint_script(recipe: Recipe) -> str:
    """The shell file the VM init sources: sets ``$@`` to NAME=VALUE... COMMAND ARG...

    The container format gets the same environment and command from the OCI image's
    config; a VM has no such thing, so the recipe's are written into the image.
    """
    for name in recipe.env:
        if not _ENV_NAME_RE.match(name):
            raise ImageBuildError(f"recipe {recipe.name}: environment name {name!r} is not valid")
    if not recipe.command or "=" in recipe.command[0]:
        raise ImageBuildError(
            f"recipe {recipe.name}: the command must be set and its program name has no '='"
        )
    words = [f"{name}={value}" for name, value in sorted(recipe.env.items())]
    words += list(recipe.command)
    return (
        "# Written by the OnePlatform image builder from the recipe: the image's environment\n"
        f"# and command. Sourced by {VM_INIT}.\n"
        f"set -- {shlex.join(words)}\n"
    )


def _entrypoint_hook(recipe: Recipe) -> str:
    target = f'"$1"{shlex.quote(ENTRYPOINT_PATH)}'
    return (
        f'mkdir -p "$1"{shlex.quote(os.path.dirname(ENTRYPOINT_PATH))} && '
        f"printf %s {shlex.quote(entrypoint_script(recipe))} > {target} && chmod 0644 {target}"
    )


def _is_script(source: Path) -> bool:
    with source.open("rb") as handle:
        return handle.read(2) == b"#!"


def _check_free_space(cache_dir: Path) -> None:
    """mmdebstrap fills a chroot under the temp dir, then writes the tar into the cache."""
    for directory in {cache_dir, Path(tempfile.gettempdir())}:
        _require_free(directory, MIN_FREE_BYTES, "to build an image")


def _require_free(directory: Path, need: int, purpose: str) -> None:
    free = shutil.disk_usage(directory).free
    if free < need:
        raise ImageBuildError(
            f"not enough free disk space {purpose}: {free / MiB:.0f} MB free "
            f"in {directory}, need {need / 1024**3:.1f} GB",
            directory=str(directory),
            free_bytes=free,
            need_bytes=need,
        )


def _run_mmdebstrap(argv: list[str], progress: Progress | None) -> None:
    if shutil.which(argv[0]) is None:
        raise ImageBuildError("mmdebstrap is not installed (run scripts/setup.sh)")
    _run_tool(argv, progress)


def _run_tool(argv: Sequence[str], progress: Progress | None, prefix: str = "") -> None:
    """Run a build tool, passing its output lines to ``progress``; raise with its tail."""
    tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env={**os.environ, "LC_ALL": "C.UTF-8"},
        )
    except OSError as exc:
        raise ImageBuildError(f"cannot run {argv[0]}: {exc}") from exc
    with proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            tail.append(line)
            if progress is not None and line:
                progress(prefix + line)
        code = proc.wait()
    if code != 0:
        output = "\n".join(tail)
        name = Path(argv[0]).name
        raise ImageBuildError(
            f"{name} failed with exit code {code}:\n{output}", exit_code=code, output=output
        )


def _remove_stale_parts(target: Path) -> None:
    """Temporary outputs of an earlier, crashed build (we hold the lock, so none is live)."""
    for stale in target.parent.glob(f".{target.stem}.*.part.tar"):
        stale.unlink(missing_ok=True)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- hooks for the other exporters (images/wholedisk.py, and baremetal/deploy_iso.py for
# the deploy ramdisk): one implementation of each step
run_tool = _run_tool
cache_lock = _lock
require_free = _require_free
fsync_dir = _fsync_dir
version_key = _version_key
