"""Fixtures for integration tests against the real services on this machine."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oneplatform.compute.drivers.base import HostRef, ImageArtifact
from oneplatform.compute.drivers.container import LABEL_INSTANCE, PodmanDriver
from oneplatform.compute.states import ComputeType

TEST_IMAGE_REF = "localhost/oneplatform-test/busybox:1"
TEST_PORT = 5432
BUSYBOX_APPLETS = ("sh", "nc", "sleep", "httpd", "echo", "cat", "ls", "true", "false", "kill")


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
    found = shutil.which("busybox") or ("/bin/busybox" if Path("/bin/busybox").exists() else None)
    if found is not None or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "busybox-static"]
    if subprocess.run(install, capture_output=True, env=env, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
        subprocess.run(install, capture_output=True, env=env, timeout=600)
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
    fast. Removed again at the end of the session.
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
            f"trap 'exit 0' TERM; echo started; echo \"greeting=$GREETING\"; "
            f"busybox httpd -f -p {TEST_PORT} -h /www & wait",
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
        subprocess.run(["podman", "rm", "-f", "-v", *ids], capture_output=True, timeout=120)


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
