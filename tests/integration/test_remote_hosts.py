"""Remote hosts reached as in production, over a real sshd on 127.0.0.2 (tests/sshd.py).

Podman over ``ssh://`` (the driver's whole life cycle of a container on a Podman host with a
storage of its own: image import over the connection, volume, bundle secret, exec, ports on
the host's bind address) and libvirt over ``qemu+ssh://`` (the test VM's image uploaded into a
storage pool of its own over the connection, booted with its port on the bind address,
listed, read and deleted). Host keys are trusted only when the host's settings say so.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from oneplatform.compute.drivers.base import (
    BUNDLE_GUEST_PATH,
    HostRef,
    InstanceSpec,
    PortMapping,
    VolumeSpec,
)
from oneplatform.compute.drivers.container import LABEL_INSTANCE, PodmanDriver
from oneplatform.compute.drivers.ssh import HostKeyUnknown
from oneplatform.errors import BackendUnavailable
from oneplatform.images.artifacts import ImageArtifact
from oneplatform.schemas.compute import ComputeType, PowerState
from tests.integration.conftest import TEST_PORT, require_or_fail
from tests.sshd import SshHost, ssh_host, sshd_missing

pytestmark = pytest.mark.integration

REMOTE_POOLS = Path("/var/lib/oneplatform")
REMOTE_IMAGE_REF = "localhost/oneplatform-test/busybox-remote:1"
BUNDLE = json.dumps({"instance": "remote", "secret": "s3cr\u00e9t"}).encode()


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHost]:
    problem = sshd_missing()
    require_or_fail(problem is None, problem or "")
    with ssh_host(tmp_path_factory.mktemp("remote-host"), podman=True) as host:
        yield host


@pytest.fixture(autouse=True)
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ~/.ssh of the machine's: the keys trusted are only those the settings give."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def ref(host: SshHost, compute_type: ComputeType, **settings: Any) -> HostRef:
    uri = host.podman_uri if compute_type is ComputeType.CONTAINER else host.libvirt_uri
    return HostRef(
        id="remote",
        name="remote",
        compute_type=compute_type,
        uri=uri,
        bind_address=host.address,
        settings={"identity_file": str(host.identity_file), "host_key": host.host_key, **settings},
    )


def http_answer(address: str, port: int, timeout: float = 60.0) -> str:
    """An HTTP GET of / on address:port, retried until the guest answers."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=3) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            if data.startswith(b"HTTP/"):
                return data.partition(b"\r\n\r\n")[2].decode()
        except OSError as exc:
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"{address}:{port} gave no HTTP answer: {last}")


def refused(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(3)
        return s.connect_ex((address, port)) != 0


def free_port_on(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- trust


def test_an_unknown_host_key_is_refused_before_any_connection(remote: SshHost) -> None:
    host = ref(remote, ComputeType.CONTAINER)
    untrusted = dataclasses.replace(
        host, settings={"identity_file": host.settings["identity_file"]}
    )
    before = len((remote.root / "sshd.log").read_text())
    with pytest.raises(HostKeyUnknown, match=r"\[127\.0\.0\.2\]:\d+"):
        PodmanDriver(untrusted).inventory()
    assert "Accepted publickey" not in (remote.root / "sshd.log").read_text()[before:]


def test_another_key_than_the_hosts_is_refused(remote: SshHost, tmp_path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True
    )
    other = (tmp_path / "other.pub").read_text().strip()
    for compute_type in (ComputeType.CONTAINER, ComputeType.VM):
        host = ref(remote, compute_type, host_key=other)
        with pytest.raises(BackendUnavailable, match=r"(?i)key mismatch|host key verification"):
            driver_of(host).inventory()


def driver_of(host: HostRef) -> Any:
    from oneplatform.compute.drivers import driver_for

    return driver_for(host)


# ---------------------------------------------------------------------------- Podman over SSH


@pytest.fixture
def remote_image(test_image: ImageArtifact) -> ImageArtifact:
    """conftest's busybox image under a ref of its own (imported here over SSH)."""
    return ImageArtifact(
        name="busybox-remote",
        ref=REMOTE_IMAGE_REF,
        rootfs=test_image.rootfs,
        command=test_image.command,
        env=test_image.env,
    )


def test_podman_over_ssh_runs_a_container_on_the_remote_host(
    remote: SshHost, remote_image: ImageArtifact
) -> None:
    driver = PodmanDriver(ref(remote, ComputeType.CONTAINER, runtime="runc"))
    inventory = driver.inventory()
    assert inventory.vcpus > 0 and inventory.ram_mb > 0
    remote.podman("rmi", "--force", REMOTE_IMAGE_REF, check=False)
    driver.ensure_image(remote_image)  # the tarball travels over the SSH connection
    assert remote.podman("image", "exists", REMOTE_IMAGE_REF, check=False).returncode == 0
    local = subprocess.run(["podman", "image", "exists", REMOTE_IMAGE_REF], check=False)
    assert local.returncode == 1  # not on this machine's Podman: on the remote host's only

    instance_id = uuid.uuid4().hex
    port = free_port_on(remote.address)
    spec = InstanceSpec(
        instance_id=instance_id,
        name=f"remote-{instance_id[:8]}",
        image=remote_image,
        vcpus=1,
        ram_mb=128,
        disk_gb=1,
        ports=(PortMapping(name="db", guest_port=TEST_PORT, host_port=port),),
        volumes=(VolumeSpec("data", 1, "/data"),),
        config_bundle=BUNDLE,
    )
    try:
        inst = driver.create(spec)
        assert inst.power_state is PowerState.RUNNING
        assert "oneplatform test image" in http_answer(remote.address, port)
        assert refused("127.0.0.1", port)  # published on the host's bind address only
        bundle = driver.exec(instance_id, ["cat", BUNDLE_GUEST_PATH])
        assert bundle.exit_code == 0 and bundle.output.encode() == BUNDLE
        assert driver.exec(instance_id, ["sh", "-c", "echo kept > /data/f"]).exit_code == 0
        driver.reboot(instance_id)
        assert driver.exec(instance_id, ["cat", "/data/f"]).output.strip() == "kept"
        assert "started" in driver.console_log(instance_id)
        assert [i.instance_id for i in driver.list_instances()] == [instance_id]
        mine = f"label={LABEL_INSTANCE}={instance_id}"
        on_remote = remote.podman("ps", "-aq", "--filter", mine).stdout.split()
        here = subprocess.run(
            ["podman", "ps", "-aq", "--filter", mine], capture_output=True, text=True, check=True
        ).stdout.split()
        assert len(on_remote) == 1 and here == []
    finally:
        driver.delete(instance_id)
    assert driver.get(instance_id) is None
    assert remote.podman("volume", "ls", "-q", "--filter", mine).stdout.split() == []
    assert remote.podman("secret", "ls", "--format", "{{.Name}}").stdout.split() == []


# ---------------------------------------------------------------------------- libvirt over SSH


def test_libvirt_over_ssh_uploads_boots_and_deletes_a_vm(
    remote: SshHost,
    vm_test_image: ImageArtifact,
    new_vm_instance_id: Callable[[], str],
) -> None:
    from oneplatform.compute.drivers.vm import LibvirtDriver

    pool = f"onep-remote-{uuid.uuid4().hex[:8]}"
    pool_dir = REMOTE_POOLS / pool  # QEMU's user must reach it: not under the test's tmp dir
    driver = LibvirtDriver(
        ref(remote, ComputeType.VM, storage_pool=pool, storage_path=str(pool_dir))
    )
    instance_id = new_vm_instance_id()
    port = free_port_on(remote.address)
    spec = InstanceSpec(
        instance_id=instance_id,
        name=f"vm-remote-{instance_id[:8]}",
        image=vm_test_image,
        vcpus=1,
        ram_mb=256,
        disk_gb=1,
        ports=(PortMapping(name="db", guest_port=TEST_PORT, host_port=port),),
        volumes=(VolumeSpec("pgdata", 1, "/var/lib/postgresql"),),
        config_bundle=BUNDLE,
    )
    try:
        assert driver.inventory().vcpus > 0
        driver.ensure_image(vm_test_image)  # streamed into the pool over the connection
        uploaded = {p.name for p in pool_dir.iterdir()}
        assert any(name.startswith("base-") for name in uploaded), uploaded
        inst = driver.create(spec)
        assert inst.power_state is PowerState.RUNNING
        assert http_answer(remote.address, port, timeout=120).startswith("onep-test-vm")
        assert refused("127.0.0.1", port)
        assert instance_id in {i.instance_id for i in driver.list_instances()}
        assert "onep-test: " in driver.console_log(instance_id, tail=1000)  # read remotely
        driver.delete(instance_id)
        assert driver.get(instance_id) is None
        assert not any(p.name.startswith(f"onep-{instance_id}") for p in pool_dir.iterdir())
    finally:
        _drop_pool(pool)
        shutil.rmtree(pool_dir, ignore_errors=True)


def _drop_pool(name: str) -> None:
    import libvirt

    conn = libvirt.open("qemu:///system")
    try:
        found = conn.storagePoolLookupByName(name)
        found.refresh(0)
        for vol in found.listAllVolumes(0):
            vol.delete(0)
        if found.isActive():
            found.destroy()
        found.undefine()
    except libvirt.libvirtError:
        pass
    finally:
        conn.close()
