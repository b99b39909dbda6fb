"""Fixtures for integration tests against the real services on this machine."""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import socket
import subprocess
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oneplatform.baremetal.deploy_iso import cpio_newc, module_closure
from oneplatform.compute.drivers.base import HostRef
from oneplatform.compute.drivers.container import LABEL_INSTANCE, PodmanDriver
from oneplatform.images.artifacts import ImageArtifact, VmImage
from oneplatform.schemas.compute import ComputeType
from tests.podman import force_remove

TEST_IMAGE_REF = "localhost/oneplatform-test/busybox:1"
TEST_PORT = 5432
BUSYBOX_APPLETS = (
    "sh", "nc", "sleep", "httpd", "echo", "cat", "ls", "true", "false", "kill", "printf", "grep",
)  # fmt: skip


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_or_fail(condition: object, reason: str) -> None:
    """Skip the test when ``condition`` is false, but fail it under CI=true: CI never skips."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"CI=true and an integration prerequisite is missing: {reason}")
    pytest.skip(reason)


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hmp_command(monitor: Path, command: str) -> str:
    """One HMP command on a QEMU monitor socket; returns what QEMU answered.

    It waits for the prompt that follows the command: HMP reads a byte at a time, and a
    client that hangs up right after sending can lose the command (seen under load).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(monitor))
        answer = b""
        while not answer.endswith(b"(qemu) "):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"the QEMU monitor {monitor} closed before its prompt")
            answer += chunk
        sock.sendall(command.encode() + b"\n")
        answer = b""
        while not answer.endswith(b"(qemu) "):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.decode(errors="replace")


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Call it for a free TCP port on 127.0.0.1."""
    return find_free_port


def _podman_works() -> bool:
    if shutil.which("podman") is None:
        return False
    try:
        proc = subprocess.run(
            ["podman", "info", "--format", "json"], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


@pytest.fixture(scope="session")
def podman_available() -> None:
    require_or_fail(_podman_works(), "podman is not installed or does not work here")


@pytest.fixture(scope="session")
def podman_host() -> HostRef:
    return HostRef(
        id="host-local-podman",
        name="local-podman",
        compute_type=ComputeType.CONTAINER,
        uri="local://",
        bind_address="127.0.0.1",
        settings={"runtime": "runc"},
    )


@pytest.fixture
def podman_driver(podman_available: None, podman_host: HostRef) -> PodmanDriver:
    return PodmanDriver(podman_host)


def _busybox() -> str | None:
    """The set-up installs busybox-static; tests never install anything themselves."""
    return shutil.which("busybox") or ("/bin/busybox" if Path("/bin/busybox").exists() else None)


def _make_rootfs_tar(busybox: str, dest: Path) -> Path:
    root = dest / "rootfs"
    for d in ("bin", "etc", "tmp", "www", "proc", "sys", "dev"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    for applet in BUSYBOX_APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "www" / "index.html").write_text("oneplatform test image\n")
    tar_path = dest / "rootfs.tar"
    with tarfile.open(tar_path, "w") as tar:
        for entry in sorted(root.iterdir()):
            tar.add(entry, arcname=entry.name)
    return tar_path


@pytest.fixture(scope="session")
def test_image(
    podman_available: None, podman_host: HostRef, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ImageArtifact]:
    """A tiny busybox image, imported with the driver's own ``ensure_image``.

    It prints ``started`` and serves HTTP on TEST_PORT; PID 1 exits on SIGTERM, so stop is
    fast, and writes ``to-stderr`` to its stderr on SIGUSR1. Removed again at the end of the
    session.
    """
    busybox = _busybox()
    require_or_fail(busybox, "busybox is missing and could not be installed (busybox-static)")
    assert busybox is not None
    tar_path = _make_rootfs_tar(busybox, tmp_path_factory.mktemp("busybox-image"))
    image = ImageArtifact(
        name="busybox-test",
        ref=TEST_IMAGE_REF,
        rootfs=tar_path,
        command=(
            "/bin/sh",
            "-c",
            "trap 'exit 0' TERM; trap 'echo to-stderr >&2' USR1; "
            'echo started; echo "greeting=$GREETING"; '
            f"busybox httpd -f -p {TEST_PORT} -h /www & pid=$!; "
            "while kill -0 $pid; do wait $pid; done",
        ),
        env={"GREETING": "hello from the image"},
    )
    subprocess.run(["podman", "rmi", "-f", TEST_IMAGE_REF], capture_output=True, timeout=120)
    PodmanDriver(podman_host).ensure_image(image)
    yield image
    subprocess.run(["podman", "rmi", "-f", TEST_IMAGE_REF], capture_output=True, timeout=120)


def _remove_labelled(instance_id: str) -> None:
    proc = subprocess.run(
        ["podman", "ps", "-aq", "--filter", f"label={LABEL_INSTANCE}={instance_id}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    ids = proc.stdout.split()
    if ids:
        force_remove(*ids, check=False)


@pytest.fixture
def new_instance_id(podman_available: None) -> Iterator[Callable[[], str]]:
    """Hands out random instance ids; every container made with one is removed afterwards."""
    made: list[str] = []

    def make() -> str:
        instance_id = uuid.uuid4().hex
        made.append(instance_id)
        return instance_id

    yield make
    for instance_id in made:
        _remove_labelled(instance_id)


def _remove_instance_storage(instance_id: str) -> None:
    """Remove the named volumes and bundle secret of ``instance_id`` (and what uses them)."""
    proc = subprocess.run(
        ["podman", "volume", "ls", "-q", "--filter", f"label={LABEL_INSTANCE}={instance_id}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    names = proc.stdout.split()
    if names:  # --force also removes containers that use them
        subprocess.run(["podman", "volume", "rm", "-f", *names], capture_output=True, timeout=120)
    subprocess.run(
        ["podman", "secret", "rm", f"onep-{instance_id}-bundle"], capture_output=True, timeout=60
    )


@pytest.fixture
def new_stateful_instance_id(
    new_instance_id: Callable[[], str],
) -> Iterator[Callable[[], str]]:
    """Like ``new_instance_id``, and also removes the instance's volumes and bundle secret."""
    made: list[str] = []

    def make() -> str:
        instance_id = new_instance_id()
        made.append(instance_id)
        return instance_id

    yield make
    for instance_id in made:
        _remove_instance_storage(instance_id)


# ---------------------------------------------------------------------------- libvirt / VMs

LIBVIRT_URI = "qemu:///system"
VM_TEST_IMAGE_REF = "localhost/oneplatform-test/vm-busybox:1"
VM_TEST_POOL = "oneplatform"
VM_TEST_GRACE_S = 30.0  # the test guest powers off on Ctrl-Alt-Del within a few seconds
# Kernel modules the test guest loads (with their dependencies, from modules.dep).
VM_GUEST_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "isofs")
VM_CMDLINE = "console=ttyS0 quiet panic=-1"
# With this on the kernel command line the test guest ignores Ctrl-Alt-Del.
VM_IGNORE_CAD = "onep_test.cad=ignore"

# PID 1 of the test VM (busybox sh, then busybox init): reports on the serial console what
# the driver attached, keeps a boot counter on the data disk, serves HTTP on 5432 (with a
# probe of what the guest can reach).
VM_TEST_INIT = r"""#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /mnt/root /mnt/config /www /etc
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "onep-test: $*"; }
for m in $(cat /modules.order); do insmod "/lib/modules/$m" || say "insmod $m failed"; done
say "booted"
by_serial() {
    for d in /sys/block/vd*; do
        [ "$(cat "$d/serial" 2>/dev/null)" = "$1" ] && { echo "${d##*/}"; return 0; }
    done
    return 1
}
for d in /sys/block/vd*; do say "disk ${d##*/} serial=$(cat "$d/serial")"; done
if root=$(by_serial onep-root) && mount -t ext4 -o ro "/dev/$root" /mnt/root; then
    say "root disk says $(cat /mnt/root/hello)"
fi
if cfg=$(by_serial onep-config) && mount -t iso9660 -o ro "/dev/$cfg" /mnt/config; then
    f=/mnt/config/bundle.json
    say "bundle size=$(wc -c < $f) sha256=$(sha256sum $f | cut -d' ' -f1)"
else
    say "no config drive"
fi
if data=$(by_serial onep-data); then
    prev=$(dd if="/dev/$data" bs=64 count=1 2>/dev/null | tr -d '\000')
    boot=$(( $(echo "$prev" | sed -n 's/^onep-data boot=\([0-9]*\)$/\1/p') + 1 ))
    say "data disk held '$prev'"
    printf 'onep-data boot=%s\n' "$boot" | dd of="/dev/$data" conv=notrunc,fsync 2>/dev/null
    say "data disk now 'onep-data boot=$boot'"
fi
ip link set lo up
for n in /sys/class/net/*; do
    ifc=${n##*/}
    [ "$ifc" = lo ] && continue
    ip link set "$ifc" up && ip addr add 10.0.2.15/24 dev "$ifc"
    ip route add default via 10.0.2.2
    say "network $ifc 10.0.2.15/24"
    break
done
mem_kb=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)
echo "onep-test-vm vcpus=$(nproc) mem_kb=$mem_kb" > /www/index.html
# GET /cgi-bin/probe?ADDRESS:PORT answers "open" when the guest gets an HTTP answer there.
mkdir -p /www/cgi-bin
cat > /www/cgi-bin/probe <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
case "$QUERY_STRING" in *[!0-9.:]*|"") echo "bad query"; exit 0;; esac
if printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 "${QUERY_STRING%:*}" "${QUERY_STRING#*:}" \
    2>/dev/null | grep -q '^HTTP/'; then echo open; else echo closed; fi
EOF
chmod 755 /www/cgi-bin/probe
{
    echo "::sysinit:/bin/echo onep-test: listening on 5432"
    echo "::respawn:/bin/httpd -f -p 5432 -h /www"
    grep -q 'onep_test.cad=ignore' /proc/cmdline || echo "::ctrlaltdel:/bin/poweroff"
    echo "::shutdown:/bin/echo onep-test: shutting down"
    echo "::shutdown:/bin/sync"
} > /etc/inittab
exec /bin/busybox init
"""


def _libvirt_works() -> str | None:
    """None when libvirt-python imports and the local daemon answers; else why not."""
    try:
        import libvirt
    except ImportError:
        return "libvirt-python is not installed (pip install 'libvirt-python>=9,<12')"
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open(LIBVIRT_URI)
    except libvirt.libvirtError as exc:
        return f"libvirtd does not answer at {LIBVIRT_URI} (start `libvirtd -d`): {exc}"
    try:
        conn.getVersion()
    finally:
        conn.close()
    if subprocess.run(["pgrep", "-x", "virtlogd"], capture_output=True).returncode != 0:
        return "virtlogd is not running (start `virtlogd -d`): domains cannot start without it"
    return None


@pytest.fixture(scope="session")
def libvirt_available() -> None:
    problem = _libvirt_works()
    require_or_fail(problem is None, problem or "")


@pytest.fixture(scope="session")
def libvirt_host() -> HostRef:
    return HostRef(
        id="host-local-libvirt",
        name="local-libvirt",
        compute_type=ComputeType.VM,
        uri=LIBVIRT_URI,
        bind_address="127.0.0.1",
        settings={"storage_pool": VM_TEST_POOL, "stop_grace_s": VM_TEST_GRACE_S},
    )


def _host_kernel() -> Path | None:
    """The newest /boot/vmlinuz-* whose modules are installed (linux-image-cloud-amd64,
    which the set-up installs)."""
    kernels = [
        k
        for k in sorted(Path("/boot").glob("vmlinuz-*"))
        if (Path("/lib/modules") / k.name.removeprefix("vmlinuz-") / "modules.dep").is_file()
    ]
    return kernels[-1] if kernels else None


def _build_vm_image(dest: Path, kernel: Path, busybox: str) -> VmImage:
    """The host's kernel, a busybox initramfs running VM_TEST_INIT, a 16 MB ext4 qcow2."""
    moddir = Path("/lib/modules") / kernel.name.removeprefix("vmlinuz-")
    s_dir, s_reg, s_lnk, s_chr = 0o040000, 0o100000, 0o120000, 0o020000
    dirs = ("bin", "dev", "proc", "sys", "etc", "lib", "lib/modules", "mnt", "www")
    entries = [(d, s_dir | 0o755, b"", 0) for d in dirs]
    entries += [
        ("dev/console", s_chr | 0o600, b"", os.makedev(5, 1)),
        ("bin/busybox", s_reg | 0o755, Path(busybox).read_bytes(), 0),
        ("bin/sh", s_lnk | 0o777, b"busybox", 0),
        ("init", s_reg | 0o755, VM_TEST_INIT.encode(), 0),
    ]
    names = []
    modules, missing = module_closure((moddir / "modules.dep").read_text(), VM_GUEST_MODULES)
    assert not missing, f"the host kernel has no module for {missing}"
    for mod in modules:
        names.append(Path(mod).name)
        data = (moddir / mod).read_bytes()
        entries.append((f"lib/modules/{names[-1]}", s_reg | 0o644, data, 0))
    entries.append(("modules.order", s_reg | 0o644, ("\n".join(names) + "\n").encode(), 0))
    initrd = dest / "initrd.img"
    initrd.write_bytes(gzip.compress(cpio_newc(entries), 6))
    rootfs = dest / "rootfs"
    rootfs.mkdir()
    (rootfs / "hello").write_text("hello from the base image\n")
    raw, disk = dest / "root.raw", dest / "root.qcow2"
    with raw.open("wb") as f:
        f.truncate(16 * 1024 * 1024)
    mkfs = ["mkfs.ext4", "-q", "-F", "-L", "onep-root", "-d", str(rootfs), str(raw)]
    subprocess.run(mkfs, check=True, capture_output=True, timeout=120)
    convert = ["qemu-img", "convert", "-O", "qcow2", str(raw), str(disk)]
    subprocess.run(convert, check=True, capture_output=True, timeout=120)
    raw.unlink()
    kernel_copy = dest / "vmlinuz"
    shutil.copyfile(kernel, kernel_copy)
    return VmImage(disk=disk, kernel=kernel_copy, initrd=initrd, cmdline=VM_CMDLINE)


def _delete_pool_volumes(predicate: Callable[[str], bool]) -> None:
    import libvirt

    conn = libvirt.open(LIBVIRT_URI)
    try:
        pool = conn.storagePoolLookupByName(VM_TEST_POOL)
        pool.refresh(0)
        for name in pool.listVolumes():
            if predicate(name):
                with contextlib.suppress(libvirt.libvirtError):
                    pool.storageVolLookupByName(name).delete(0)
    except libvirt.libvirtError:
        pass  # no pool: nothing to delete
    finally:
        conn.close()


@pytest.fixture(scope="session")
def vm_test_image(
    libvirt_available: None, libvirt_host: HostRef, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ImageArtifact]:
    """A tiny VM image (host kernel + busybox initramfs), uploaded with ``ensure_image``.

    Its /init prints the virtio disks' serials, the config drive's bundle size and sha256
    and the data disk's boot counter on ttyS0, configures 10.0.2.15/24 and serves HTTP on
    5432 (``onep-test-vm vcpus=N mem_kb=M``). Ctrl-Alt-Del powers it off (unless the kernel
    command line has VM_IGNORE_CAD). Its base volumes are deleted at the end of the session.
    """
    from oneplatform.compute.drivers.vm import LibvirtDriver
    from oneplatform.compute.drivers.vm_domain import base_volume_names

    busybox = _busybox()
    require_or_fail(busybox, "busybox is missing and could not be installed (busybox-static)")
    kernel = _host_kernel()
    require_or_fail(
        kernel, "no /boot/vmlinuz-* with modules (apt-get install linux-image-cloud-amd64)"
    )
    for tool, package in (("qemu-img", "qemu-utils"), ("mkfs.ext4", "e2fsprogs")):
        require_or_fail(shutil.which(tool), f"{tool} is missing (apt-get install {package})")
    assert busybox is not None and kernel is not None
    vm = _build_vm_image(tmp_path_factory.mktemp("vm-image"), kernel, busybox)
    image = ImageArtifact(name="vm-busybox-test", ref=VM_TEST_IMAGE_REF, rootfs=None, vm=vm)
    base = base_volume_names(VM_TEST_IMAGE_REF)
    ours = {base.disk, base.kernel, base.initrd}
    _delete_pool_volumes(ours.__contains__)  # a stale upload from an aborted session
    LibvirtDriver(libvirt_host).ensure_image(image)
    yield image
    _delete_pool_volumes(ours.__contains__)


def _remove_vm(instance_id: str) -> None:
    """Destroy and undefine ``onep-<instance_id>`` and delete its volumes, whatever state."""
    import libvirt

    conn = libvirt.open(LIBVIRT_URI)
    try:
        dom = conn.lookupByName(f"onep-{instance_id}")
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    except libvirt.libvirtError:
        pass  # already gone
    finally:
        conn.close()
    _delete_pool_volumes(lambda name: name.startswith(f"onep-{instance_id}-"))


@pytest.fixture
def new_vm_instance_id(libvirt_available: None) -> Iterator[Callable[[], str]]:
    """Hands out random instance ids; their domains and volumes are removed afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(uuid.uuid4().hex)
        return made[-1]

    yield make
    for instance_id in made:
        _remove_vm(instance_id)


# ---------------------------------------------------------------------------- bare metal (Redfish)

REPO_ROOT = Path(__file__).resolve().parents[2]
BMLAB_SCRIPT = REPO_ROOT / "scripts" / "bmlab.sh"
BMLAB_DIR = Path(os.environ.get("ONEP_BMLAB_DIR", "/var/lib/oneplatform/bmlab"))
BMLAB_POOL = "default"  # where the emulator uploads inserted media as <image>-<uuid>.img
# The kernel the test ISO's boot loader looks for (and lacks): ISOLINUX prints "Loading
# onep-bmlab-iso-booted... failed" on the node's serial console. (Its SAY and DISPLAY output
# reach the VGA console only: the serial port is set up after the config file is read.)
BM_ISO_MARKER = "onep-bmlab-iso-booted"


def virsh(*args: str, check: bool = True) -> str:
    """``virsh -q -c qemu:///system ARGS`` and its stdout (stripped)."""
    proc = subprocess.run(
        ["virsh", "-q", "-c", LIBVIRT_URI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _bmlab_problem() -> str | None:
    """None when the lab can be brought up here; else why not."""
    if not BMLAB_SCRIPT.is_file():
        return f"{BMLAB_SCRIPT} is missing"
    try:
        import sushy  # noqa: F401
    except ImportError:
        return "sushy is not installed (pip install -e '.[dev]')"
    if os.geteuid() != 0:
        return "the bare-metal lab needs root (libvirt qemu:///system, /var/lib/oneplatform)"
    if shutil.which("curl") is None:
        return "curl is missing (apt-get install curl)"
    return None


@pytest.fixture(scope="session")
def bmlab(libvirt_available: None) -> Iterator[list[dict[str, object]]]:
    """The bare-metal lab (``scripts/bmlab.sh up``): the nodes of nodes.json, node 0 first.

    Each node is a dict: name, bmc_url, system_id, system_path, username, password, mac,
    ports ({"5432": host port, "8471": host port}), console_log, disk_volume. At the end every
    lab node is powered off (through virsh) and media the emulator uploaded and no domain uses
    any more is deleted; the lab itself stays up, so the next session's ``up`` is quick.
    """
    import json

    problem = _bmlab_problem()
    require_or_fail(problem is None, problem or "")
    proc = subprocess.run(
        [str(BMLAB_SCRIPT), "up"], capture_output=True, text=True, timeout=900, check=False
    )
    require_or_fail(
        proc.returncode == 0,
        f"scripts/bmlab.sh up failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}",
    )
    nodes: list[dict[str, object]] = json.loads((BMLAB_DIR / "nodes.json").read_text())["nodes"]
    yield nodes
    for node in nodes:
        _bm_power_off(str(node["name"]))
        _delete_unused_uploads(str(node["name"]), str(node["system_id"]))


def _bm_power_off(name: str) -> None:
    if virsh("domstate", name, check=False) == "running":
        virsh("destroy", name, check=False)


def _delete_unused_uploads(name: str, system_uuid: str) -> None:
    """Delete the emulator's ``<image>-<uuid>.img`` uploads unless the domain still uses one."""
    xml = virsh("dumpxml", "--inactive", name, check=False)
    for line in virsh("vol-list", BMLAB_POOL, check=False).splitlines():
        parts = line.split()
        if parts and parts[0].endswith(f"-{system_uuid}.img") and parts[-1] not in xml:
            virsh("vol-delete", "--pool", BMLAB_POOL, parts[0], check=False)


@pytest.fixture
def bm_node(bmlab: list[dict[str, object]]) -> Iterator[dict[str, object]]:
    """Lab node 0 (the only one tests power on: TCG is heavy); powered off again afterwards."""
    node = bmlab[0]
    _bm_power_off(str(node["name"]))
    yield node
    _bm_power_off(str(node["name"]))


def _make_boot_iso(dest: Path) -> Path:
    """A tiny bootable ISO: ISOLINUX, which names BM_ISO_MARKER on the serial port, then
    waits at its boot: prompt."""
    isolinux = Path("/usr/lib/ISOLINUX/isolinux.bin")
    ldlinux = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
    require_or_fail(shutil.which("xorriso"), "xorriso is missing (apt-get install xorriso)")
    require_or_fail(
        isolinux.is_file() and ldlinux.is_file(),
        "ISOLINUX is missing (apt-get install isolinux syslinux-common)",
    )
    root = dest / "iso-root"
    (root / "isolinux").mkdir(parents=True)
    shutil.copy2(isolinux, root / "isolinux" / "isolinux.bin")
    shutil.copy2(ldlinux, root / "isolinux" / "ldlinux.c32")
    (root / "isolinux" / "isolinux.cfg").write_text(
        f"SERIAL 0 115200\nPROMPT 0\nDEFAULT onep\nLABEL onep\n  KERNEL {BM_ISO_MARKER}\n"
    )
    iso = dest / "www" / "onep-bmlab-test.iso"
    iso.parent.mkdir()
    cmd = [
        "xorriso", "-as", "mkisofs", "-quiet", "-V", "ONEP_BMLAB_TEST",
        "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
        "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
        "-o", str(iso), str(root),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return iso


@pytest.fixture(scope="session")
def bm_media_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A plain HTTP server on 127.0.0.1 serving a tiny bootable ISO (see _make_boot_iso).

    Yields {"url": the ISO's URL, "requests": the list of paths asked for so far}.
    """
    import http.server
    import threading

    iso = _make_boot_iso(tmp_path_factory.mktemp("bm-media"))
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(iso.parent), **kwargs)  # type: ignore[arg-type]

        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    yield {"url": f"http://127.0.0.1:{port}/{iso.name}", "requests": requests}
    server.shutdown()
    server.server_close()
