"""The Podman driver against the real Podman on this machine."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from oneplatform.compute.capabilities import Capability
from oneplatform.compute.drivers.base import (
    BUNDLE_GUEST_PATH,
    CAPABILITY_MIXINS,
    BackendInstance,
    FileMount,
    InstanceSpec,
    PortMapping,
    VolumeSpec,
)
from oneplatform.compute.drivers.container import (
    GUEST_SUBNETS,
    LABEL_INSTANCE,
    PODMAN_STATES,
    PodmanDriver,
    bundle_secret_name,
    container_name,
    map_state,
    network_name,
    volume_name,
)
from oneplatform.compute.ports import bindable
from oneplatform.errors import BackendError, BackendNotFound
from oneplatform.images.artifacts import ImageArtifact
from oneplatform.schemas.compute import PowerState
from tests.podman import force_remove

pytestmark = pytest.mark.integration

NewId = Callable[[], str]
TEST_PORT = 5432  # what the test image (conftest.test_image) listens on


def make_spec(
    instance_id: str,
    image: ImageArtifact,
    host_port: int,
    files: tuple[FileMount, ...] = (),
    volumes: tuple[VolumeSpec, ...] = (),
    config_bundle: bytes | None = None,
    network: str | None = None,
) -> InstanceSpec:
    return InstanceSpec(
        instance_id=instance_id,
        name=f"test-{instance_id[:8]}",
        image=image,
        vcpus=1,
        ram_mb=128,
        disk_gb=1,
        ports=(PortMapping(name="db", guest_port=TEST_PORT, host_port=host_port),),
        env={"ONEP_TEST": "1"},
        files=files,
        volumes=volumes,
        config_bundle=config_bundle,
        network=network,
    )


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    """Connect to 127.0.0.1:port and get an HTTP answer, retrying until ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/"):
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"127.0.0.1:{port} did not answer within {timeout}s: {last}")


def count_containers(instance_id: str) -> int:
    proc = subprocess.run(
        ["podman", "ps", "-aq", "--filter", f"label={LABEL_INSTANCE}={instance_id}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return len(proc.stdout.split())


def wait_for_log(driver: PodmanDriver, instance_id: str, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    log = ""
    while time.monotonic() < deadline:
        log = driver.console_log(instance_id)
        if text in log:
            return log
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in console log: {log!r}")


@pytest.fixture
def running(
    podman_driver: PodmanDriver,
    test_image: ImageArtifact,
    new_instance_id: NewId,
    free_port: Callable[[], int],
) -> tuple[str, int, BackendInstance]:
    instance_id = new_instance_id()
    port = free_port()
    created = podman_driver.create(make_spec(instance_id, test_image, port))
    return instance_id, port, created


# ---------------------------------------------------------------- no podman needed


def test_map_state_table() -> None:
    assert map_state("running") is PowerState.RUNNING
    assert map_state("Running") is PowerState.RUNNING
    assert map_state("exited") is PowerState.STOPPED
    assert map_state("stopped") is PowerState.STOPPED
    assert map_state("created") is PowerState.STOPPED
    assert map_state("configured") is PowerState.STOPPED
    assert map_state("paused") is PowerState.PAUSED
    assert map_state("stopping") is PowerState.STOPPING
    assert map_state("removing") is PowerState.STOPPING
    assert map_state("initialized") is PowerState.STARTING
    assert map_state("dead") is PowerState.CRASHED
    assert map_state("something-new") is PowerState.UNKNOWN
    assert map_state("") is PowerState.UNKNOWN
    assert all(isinstance(v, PowerState) for v in PODMAN_STATES.values())


def test_every_missing_capability_has_a_reason() -> None:
    caps = PodmanDriver.capabilities()
    assert caps[Capability.EXEC] is True
    assert PodmanDriver.unsupported_reason(Capability.EXEC) is None
    for cap in Capability:
        if issubclass(PodmanDriver, CAPABILITY_MIXINS[cap]):
            continue
        assert caps[cap] is False
        assert cap in PodmanDriver.UNSUPPORTED, f"no reason given for {cap.value}"
        reason = PodmanDriver.unsupported_reason(cap)
        assert reason and len(reason) > 20


def test_init_does_no_io(podman_host: object) -> None:
    from oneplatform.compute.drivers.base import HostRef
    from oneplatform.schemas.compute import ComputeType

    host = HostRef(id="x", name="x", compute_type=ComputeType.CONTAINER, uri="local://")
    driver = PodmanDriver(host)
    assert driver.host is host


# ---------------------------------------------------------------- real podman


def test_ensure_image_twice_is_fine(podman_driver: PodmanDriver, test_image: ImageArtifact) -> None:
    podman_driver.ensure_image(test_image)
    podman_driver.ensure_image(test_image)
    exists = subprocess.run(["podman", "image", "exists", test_image.ref], timeout=60)
    assert exists.returncode == 0


def test_ensure_image_without_rootfs_is_a_clear_error(podman_driver: PodmanDriver) -> None:
    image = ImageArtifact(name="nope", ref="localhost/oneplatform-test/absent:1", rootfs=None)
    with pytest.raises(BackendError, match="no rootfs"):
        podman_driver.ensure_image(image)


def test_inventory(podman_driver: PodmanDriver) -> None:
    inv = podman_driver.inventory()
    assert inv.vcpus >= 1
    assert inv.ram_mb >= 256
    assert inv.disk_gb >= 1


def test_create_runs_and_publishes_port(
    podman_driver: PodmanDriver, running: tuple[str, int, BackendInstance]
) -> None:
    instance_id, port, created = running
    assert created.instance_id == instance_id
    assert created.power_state is PowerState.RUNNING
    assert created.backend_state == "running"
    assert created.ports == (PortMapping(name="db", guest_port=TEST_PORT, host_port=port),)
    wait_for_port(port)
    got = podman_driver.get(instance_id)
    assert got is not None and got.backend_id == created.backend_id


def test_create_passes_limits_env_and_runtime(
    podman_driver: PodmanDriver, running: tuple[str, int, BackendInstance]
) -> None:
    instance_id, _port, _ = running
    info = inspect(instance_id)
    assert info["OCIRuntime"] == "runc"
    assert info["HostConfig"]["Memory"] == 128 * 1024 * 1024
    assert info["HostConfig"]["NanoCpus"] == 1_000_000_000
    assert "ONEP_TEST=1" in info["Config"]["Env"]
    ulimits = {u["Name"]: (u["Soft"], u["Hard"]) for u in info["HostConfig"]["Ulimits"]}
    assert ulimits["RLIMIT_NOFILE"] == (1024, 1024)
    assert ulimits["RLIMIT_NPROC"] == (4096, 4096)


def test_create_twice_makes_one_container(
    podman_driver: PodmanDriver,
    running: tuple[str, int, BackendInstance],
    test_image: ImageArtifact,
) -> None:
    instance_id, port, created = running
    again = podman_driver.create(make_spec(instance_id, test_image, port))
    assert again.backend_id == created.backend_id
    assert count_containers(instance_id) == 1


def test_create_starts_an_existing_stopped_container(
    podman_driver: PodmanDriver,
    running: tuple[str, int, BackendInstance],
    test_image: ImageArtifact,
) -> None:
    instance_id, port, created = running
    podman_driver.stop(instance_id)
    again = podman_driver.create(make_spec(instance_id, test_image, port))
    assert again.backend_id == created.backend_id
    assert again.power_state is PowerState.RUNNING
    assert count_containers(instance_id) == 1


def test_stop_start_reboot(
    podman_driver: PodmanDriver, running: tuple[str, int, BackendInstance]
) -> None:
    instance_id, port, _ = running
    t0 = time.monotonic()
    podman_driver.stop(instance_id)
    assert time.monotonic() - t0 < 8, "PID 1 should exit on SIGTERM well before the grace period"
    got = podman_driver.get(instance_id)
    assert got is not None and got.power_state is PowerState.STOPPED
    podman_driver.stop(instance_id)  # silent when already stopped

    podman_driver.start(instance_id)
    got = podman_driver.get(instance_id)
    assert got is not None and got.power_state is PowerState.RUNNING
    podman_driver.start(instance_id)  # silent when already running
    wait_for_port(port)

    podman_driver.reboot(instance_id)
    got = podman_driver.get(instance_id)
    assert got is not None and got.power_state is PowerState.RUNNING
    wait_for_port(port)


def test_start_when_the_last_run_left_its_address_allocated(
    podman_driver: PodmanDriver, running: tuple[str, int, BackendInstance]
) -> None:
    """Podman 4.3 with CNI: a container whose last run's address is still allocated (its
    exit clean-up not done yet) fails `podman start` with "duplicate allocation"; the
    driver releases the address and starts it."""
    instance_id, port, _ = running
    podman_driver.stop(instance_id)
    info = json.loads(podman_out("inspect", container_name(instance_id)).stdout)[0]
    (network,) = info["NetworkSettings"]["Networks"]
    config = json.loads(podman_out("network", "inspect", network).stdout)[0]
    subnet = ipaddress.ip_network(config["subnets"][0]["subnet"])
    stale = Path("/var/lib/cni/networks", network, str(subnet[-3]))  # far from the used ones
    if not stale.parent.is_dir():
        pytest.fail(f"this Podman does not keep CNI allocations in {stale.parent}")
    stale.write_text(f"{info['Id']}\r\neth0")  # what host-local IPAM writes
    try:
        podman_driver.start(instance_id)
        got = podman_driver.get(instance_id)
        assert got is not None and got.power_state is PowerState.RUNNING
        wait_for_port(port)
    finally:
        stale.unlink(missing_ok=True)


def test_start_removes_a_stale_forwarding_of_its_ports(
    podman_driver: PodmanDriver, running: tuple[str, int, BackendInstance]
) -> None:
    """A forwarding of the container's host port that a dead container's CNI tear-down left
    in front of its own (seen under load on this host) is removed at its next start: the
    published port reaches the container again."""
    instance_id, port, _ = running
    podman_driver.stop(instance_id)
    chain, dead = "CNI-DN-onep-test-stale", "0" * 64
    nat = ["iptables", "-w", "10", "-t", "nat"]
    subprocess.run([*nat, "-N", chain], check=True)
    subprocess.run(
        [*nat, "-A", chain, "-d", "127.0.0.1/32", "-p", "tcp", "--dport", str(port),
         "-j", "DNAT", "--to-destination", "10.88.255.254:5432"],
        check=True,
    )  # fmt: skip
    jump = ["-p", "tcp", "-m", "comment", "--comment", f'dnat name: "podman" id: "{dead}"',
            "-m", "multiport", "--dports", str(port), "-j", chain]  # fmt: skip
    subprocess.run([*nat, "-I", "CNI-HOSTPORT-DNAT", "1", *jump], check=True)
    try:
        podman_driver.start(instance_id)
        wait_for_port(port)
        rules = subprocess.run([*nat, "-S"], capture_output=True, text=True, check=True).stdout
        assert dead not in rules and chain not in rules
    finally:
        subprocess.run([*nat, "-D", "CNI-HOSTPORT-DNAT", *jump], capture_output=True)
        subprocess.run([*nat, "-F", chain], capture_output=True)
        subprocess.run([*nat, "-X", chain], capture_output=True)


def test_console_log_has_startup_output(
    podman_driver: PodmanDriver, running: tuple[str, int, BackendInstance]
) -> None:
    instance_id, _port, _ = running
    log = wait_for_log(podman_driver, instance_id, "started")
    # The image's ENV (a value with spaces) reached the process.
    assert "greeting=hello from the image" in log
    assert podman_driver.console_log(instance_id, tail=1).count("\n") <= 1


def test_console_log_merges_stderr(
    podman_driver: PodmanDriver, running: tuple[str, int, BackendInstance]
) -> None:
    instance_id, _port, _ = running
    # exec output does not go to the log, and in its own user namespace the guest cannot
    # open PID 1's stderr (a pipe of the host's) through /proc: PID 1 writes on SIGUSR1.
    name = container_name(instance_id)
    subprocess.run(["podman", "kill", "--signal", "USR1", name], check=True, timeout=60)
    wait_for_log(podman_driver, instance_id, "to-stderr")


def test_exec(podman_driver: PodmanDriver, running: tuple[str, int, BackendInstance]) -> None:
    instance_id, _port, _ = running
    ok = podman_driver.exec(instance_id, ["echo", "hello"])
    assert ok.exit_code == 0
    assert ok.output.strip() == "hello"
    failed = podman_driver.exec(instance_id, ["/bin/sh", "-c", "echo oops >&2; exit 3"])
    assert failed.exit_code == 3
    assert "oops" in failed.output
    missing = podman_driver.exec(instance_id, ["/no/such/binary"])
    assert missing.exit_code in (126, 127)


def test_exec_timeout_raises(
    podman_driver: PodmanDriver, running: tuple[str, int, BackendInstance]
) -> None:
    instance_id, _port, _ = running
    with pytest.raises(BackendError, match="timed out"):
        podman_driver.exec(instance_id, ["sleep", "30"], timeout=1)


def test_exec_in_stopped_container_raises(
    podman_driver: PodmanDriver, running: tuple[str, int, BackendInstance]
) -> None:
    instance_id, _port, _ = running
    podman_driver.stop(instance_id)
    with pytest.raises(BackendError):
        podman_driver.exec(instance_id, ["true"])


def test_file_mount(
    podman_driver: PodmanDriver,
    test_image: ImageArtifact,
    new_instance_id: NewId,
    free_port: Callable[[], int],
    tmp_path: Path,
) -> None:
    conf = tmp_path / "app.conf"
    conf.write_text("setting=42\n")
    instance_id = new_instance_id()
    mount = FileMount(source=conf, guest_path="/etc/app.conf")
    podman_driver.create(make_spec(instance_id, test_image, free_port(), files=(mount,)))
    shown = podman_driver.exec(instance_id, ["cat", "/etc/app.conf"])
    assert shown.output == "setting=42\n"
    write = podman_driver.exec(instance_id, ["/bin/sh", "-c", "echo x >> /etc/app.conf"])
    assert write.exit_code != 0  # read-only by default


def test_get_unknown_is_none(podman_driver: PodmanDriver) -> None:
    assert podman_driver.get("0" * 32) is None


def test_actions_on_unknown_raise_not_found(podman_driver: PodmanDriver) -> None:
    with pytest.raises(BackendNotFound):
        podman_driver.start("0" * 32)
    with pytest.raises(BackendNotFound):
        podman_driver.stop("0" * 32)


def test_list_instances_sees_ours(
    podman_driver: PodmanDriver, running: tuple[str, int, BackendInstance]
) -> None:
    instance_id, _port, created = running
    listed = {i.instance_id: i for i in podman_driver.list_instances()}
    assert instance_id in listed
    assert listed[instance_id].backend_id == created.backend_id
    assert listed[instance_id].power_state is PowerState.RUNNING


def test_published_ports_are_every_containers_running_or_not(
    podman_driver: PodmanDriver,
    test_image: ImageArtifact,
    running: tuple[str, int, BackendInstance],
    free_port: Callable[[], int],
) -> None:
    """A container not the platform's, created and never started, holds no socket for its
    port (a bind finds it free) but claims it when it starts: the port is the backend's."""
    _instance_id, ours, _ = running
    podman_driver.ensure_image(test_image)
    theirs = free_port()
    name = f"not-onep-{theirs}"
    podman_out("create", "--name", name, "-p", f"127.0.0.1:{theirs}:{TEST_PORT}", test_image.ref)
    try:
        assert bindable("127.0.0.1", theirs)
        assert {ours, theirs} <= podman_driver.published_ports()
    finally:
        force_remove(name, check=False)


def test_delete_twice_and_gone(
    podman_driver: PodmanDriver, running: tuple[str, int, BackendInstance]
) -> None:
    instance_id, _port, _ = running
    podman_driver.delete(instance_id)
    assert podman_driver.get(instance_id) is None
    assert count_containers(instance_id) == 0
    podman_driver.delete(instance_id)  # silent when already gone
    assert instance_id not in {i.instance_id for i in podman_driver.list_instances()}


def test_missing_podman_is_backend_unavailable(
    podman_host: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oneplatform.compute.drivers.base import HostRef
    from oneplatform.errors import BackendUnavailable
    from oneplatform.schemas.compute import ComputeType

    monkeypatch.setenv("PATH", "/nonexistent")
    host = HostRef(id="x", name="x", compute_type=ComputeType.CONTAINER, uri="local://")
    with pytest.raises(BackendUnavailable, match="not installed"):
        PodmanDriver(host).get("abc")


def test_unreachable_remote_is_backend_unavailable(podman_available: None, tmp_path: Path) -> None:
    from oneplatform.compute.drivers.base import HostRef
    from oneplatform.errors import BackendUnavailable
    from oneplatform.schemas.compute import ComputeType

    host = HostRef(
        id="x",
        name="x",
        compute_type=ComputeType.CONTAINER,
        uri=f"unix://{tmp_path}/no-such.sock",
    )
    with pytest.raises(BackendUnavailable):
        PodmanDriver(host).get("abc")


# ---------------------------------------------------------------- volumes and the config bundle

DATA = VolumeSpec(name="data", size_gb=3, guest_path="/data")
# Not valid UTF-8, with a newline and a NUL: the bundle must arrive byte for byte.
BUNDLE = b'{"bundle": "secret-marker-7f3a"}\n\xff\x00tail'


def podman_out(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["podman", *args], capture_output=True, timeout=60, check=check)


def volumes_of(instance_id: str) -> list[str]:
    out = podman_out("volume", "ls", "-q", "--filter", f"label={LABEL_INSTANCE}={instance_id}")
    return out.stdout.decode().split()


def secret_id(instance_id: str) -> str | None:
    """The id of the instance's bundle secret, or None if there is none."""
    proc = podman_out("secret", "inspect", bundle_secret_name(instance_id), check=False)
    if proc.returncode != 0:
        return None
    return str(json.loads(proc.stdout)[0]["ID"])


def count_bundle_secrets(instance_id: str) -> int:
    out = podman_out("secret", "ls", "--format", "{{.Name}}").stdout.decode().split()
    return out.count(bundle_secret_name(instance_id))


def read_bundle(instance_id: str) -> bytes:
    """The bundle file's exact bytes inside the container."""
    return podman_out("exec", container_name(instance_id), "cat", BUNDLE_GUEST_PATH).stdout


@pytest.fixture
def stateful(
    podman_driver: PodmanDriver,
    test_image: ImageArtifact,
    new_stateful_instance_id: NewId,
    free_port: Callable[[], int],
) -> tuple[str, InstanceSpec]:
    """A running instance with a volume at /data and the config bundle BUNDLE."""
    instance_id = new_stateful_instance_id()
    spec = make_spec(instance_id, test_image, free_port(), volumes=(DATA,), config_bundle=BUNDLE)
    podman_driver.create(spec)
    return instance_id, spec


def test_volume_has_our_labels(stateful: tuple[str, InstanceSpec]) -> None:
    instance_id, _spec = stateful
    name = volume_name(instance_id, "data")
    assert name == f"onep-{instance_id}-data"
    assert volumes_of(instance_id) == [name]
    info = json.loads(podman_out("volume", "inspect", name).stdout)[0]
    assert info["Labels"] == {
        "oneplatform.instance": instance_id,
        "oneplatform.managed": "1",
        "oneplatform.size_gb": "3",
    }
    mounts = json.loads(podman_out("inspect", container_name(instance_id)).stdout)[0]["Mounts"]
    assert [(m["Type"], m["Name"], m["Destination"]) for m in mounts] == [("volume", name, "/data")]


def test_volume_data_survives_stop_start_and_reboot(
    podman_driver: PodmanDriver, stateful: tuple[str, InstanceSpec]
) -> None:
    instance_id, _spec = stateful
    wrote = podman_driver.exec(instance_id, ["/bin/sh", "-c", "echo kept > /data/f"])
    assert wrote.exit_code == 0
    podman_driver.stop(instance_id)
    podman_driver.start(instance_id)
    assert podman_driver.exec(instance_id, ["cat", "/data/f"]).output == "kept\n"
    podman_driver.reboot(instance_id)
    assert podman_driver.exec(instance_id, ["cat", "/data/f"]).output == "kept\n"
    assert read_bundle(instance_id) == BUNDLE  # the bundle survives restarts too


def test_bundle_is_readable_with_exact_bytes_and_mode_0400(
    podman_driver: PodmanDriver, stateful: tuple[str, InstanceSpec]
) -> None:
    instance_id, _spec = stateful
    assert read_bundle(instance_id) == BUNDLE
    listing = podman_driver.exec(instance_id, ["ls", "-ln", BUNDLE_GUEST_PATH]).output.split()
    assert listing[0] == "-r--------", listing
    assert listing[2:4] == ["0", "0"]  # owned by root
    assert int(listing[4]) == len(BUNDLE)


def test_bundle_bytes_are_not_in_podman_inspect(stateful: tuple[str, InstanceSpec]) -> None:
    instance_id, _spec = stateful
    raw = podman_out("inspect", container_name(instance_id)).stdout
    assert b"secret-marker-7f3a" not in raw
    info = json.loads(raw)[0]
    assert not any("secret-marker" in arg for arg in info["Config"]["CreateCommand"])
    assert not any("secret-marker" in e for e in info["Config"]["Env"])
    assert not any("secret-marker" in arg for arg in [info["Path"], *info["Args"]])
    # ...while the secret is what is mounted.
    assert [s["Name"] for s in info["Config"]["Secrets"]] == [bundle_secret_name(instance_id)]
    secret = podman_out("secret", "inspect", bundle_secret_name(instance_id)).stdout
    assert b"secret-marker-7f3a" not in secret


def test_create_twice_keeps_one_volume_and_one_secret(
    podman_driver: PodmanDriver, stateful: tuple[str, InstanceSpec]
) -> None:
    instance_id, spec = stateful
    first_secret = secret_id(instance_id)
    podman_driver.exec(instance_id, ["/bin/sh", "-c", "echo kept > /data/f"])
    podman_driver.create(spec)
    podman_driver.stop(instance_id)
    podman_driver.create(spec)  # starts the stopped container again
    assert count_containers(instance_id) == 1
    assert volumes_of(instance_id) == [volume_name(instance_id, "data")]
    assert count_bundle_secrets(instance_id) == 1
    assert secret_id(instance_id) == first_secret  # left alone while the container exists
    assert podman_driver.exec(instance_id, ["cat", "/data/f"]).output == "kept\n"


def test_create_replaces_a_stale_secret_and_reuses_a_volume(
    podman_driver: PodmanDriver,
    test_image: ImageArtifact,
    new_stateful_instance_id: NewId,
    free_port: Callable[[], int],
) -> None:
    # What a create that failed after making its volume and secret leaves behind.
    instance_id = new_stateful_instance_id()
    subprocess.run(
        ["podman", "secret", "create", bundle_secret_name(instance_id), "-"],
        input=b"stale bundle",
        capture_output=True,
        timeout=60,
        check=True,
    )
    name = volume_name(instance_id, "data")
    podman_out("volume", "create", "--label", f"{LABEL_INSTANCE}={instance_id}", name)
    spec = make_spec(instance_id, test_image, free_port(), volumes=(DATA,), config_bundle=BUNDLE)
    podman_driver.create(spec)
    assert read_bundle(instance_id) == BUNDLE
    assert count_bundle_secrets(instance_id) == 1
    assert volumes_of(instance_id) == [name]


def test_create_refuses_a_foreign_volume_with_our_name(
    podman_driver: PodmanDriver,
    test_image: ImageArtifact,
    new_stateful_instance_id: NewId,
    free_port: Callable[[], int],
) -> None:
    instance_id = new_stateful_instance_id()
    name = volume_name(instance_id, "data")
    podman_out("volume", "create", name)
    try:
        spec = make_spec(instance_id, test_image, free_port(), volumes=(DATA,))
        with pytest.raises(BackendError, match="not labelled"):
            podman_driver.create(spec)
        assert count_containers(instance_id) == 0
    finally:
        podman_out("volume", "rm", "-f", name, check=False)


def test_invalid_volume_or_bundle_is_refused_before_anything_is_made(
    podman_driver: PodmanDriver,
    test_image: ImageArtifact,
    new_stateful_instance_id: NewId,
    free_port: Callable[[], int],
) -> None:
    instance_id = new_stateful_instance_id()
    bad_path = VolumeSpec(name="data", size_gb=1, guest_path="data:ro")
    with pytest.raises(BackendError, match="guest path"):
        podman_driver.create(make_spec(instance_id, test_image, free_port(), volumes=(bad_path,)))
    with pytest.raises(BackendError, match="config bundle is 0 bytes") as err:
        podman_driver.create(
            make_spec(instance_id, test_image, free_port(), volumes=(DATA,), config_bundle=b"")
        )
    assert "secret-marker" not in str(err.value)
    assert volumes_of(instance_id) == []
    assert secret_id(instance_id) is None
    assert count_containers(instance_id) == 0


def test_bundle_bytes_never_reach_argv(
    podman_driver: PodmanDriver,
    test_image: ImageArtifact,
    new_stateful_instance_id: NewId,
    free_port: Callable[[], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[list[str]] = []
    real_run = subprocess.run

    def spy(cmd: list[str], *args: object, **kwargs: object) -> object:
        seen.append(list(cmd))
        return real_run(cmd, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(subprocess, "run", spy)
    instance_id = new_stateful_instance_id()
    spec = make_spec(instance_id, test_image, free_port(), config_bundle=BUNDLE)
    podman_driver.create(spec)
    podman_driver.delete(instance_id)
    monkeypatch.undo()
    assert any("secret" in cmd for cmd in seen)
    assert not any("secret-marker" in arg for cmd in seen for arg in cmd)


def test_delete_removes_container_volumes_and_secret(
    podman_driver: PodmanDriver, stateful: tuple[str, InstanceSpec]
) -> None:
    instance_id, _spec = stateful
    podman_driver.delete(instance_id)
    assert count_containers(instance_id) == 0
    assert volumes_of(instance_id) == []
    assert secret_id(instance_id) is None
    podman_driver.delete(instance_id)  # silent when already gone


def test_delete_is_silent_when_volume_and_secret_were_removed_by_hand(
    podman_driver: PodmanDriver, stateful: tuple[str, InstanceSpec]
) -> None:
    instance_id, _spec = stateful
    podman_out("secret", "rm", bundle_secret_name(instance_id))  # podman allows it while in use
    podman_driver.delete(instance_id)
    assert count_containers(instance_id) == 0
    assert volumes_of(instance_id) == []


def test_delete_is_silent_when_everything_was_removed_by_hand(
    podman_driver: PodmanDriver, stateful: tuple[str, InstanceSpec]
) -> None:
    instance_id, _spec = stateful
    podman_out("secret", "rm", bundle_secret_name(instance_id))
    force_remove(container_name(instance_id))
    podman_out("volume", "rm", volume_name(instance_id, "data"))
    assert count_containers(instance_id) == 0
    podman_driver.delete(instance_id)


def test_delete_cleans_up_volumes_and_secret_without_a_container(
    podman_driver: PodmanDriver, stateful: tuple[str, InstanceSpec]
) -> None:
    instance_id, _spec = stateful
    force_remove(container_name(instance_id))
    podman_driver.delete(instance_id)
    assert volumes_of(instance_id) == []
    assert secret_id(instance_id) is None


# ---------------------------------------------------------------- confinement and networks


def inspect(instance_id: str) -> dict[str, Any]:
    proc = subprocess.run(
        ["podman", "inspect", container_name(instance_id), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(proc.stdout)[0])


def host_uids(instance_id: str) -> set[int]:
    """The host uids of the container's processes (``podman top … huser``)."""
    proc = subprocess.run(
        ["podman", "top", container_name(instance_id), "huser"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {int(line.strip()) for line in proc.stdout.splitlines()[1:] if line.strip()}


def fetches(driver: PodmanDriver, instance_id: str, address: str, port: int) -> bool:
    """Whether the guest gets an HTTP answer from address:port (from inside, with nc)."""
    request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {address} {port}"
    result = driver.exec(instance_id, ["sh", "-c", request], timeout=30)
    return result.output.startswith("HTTP/")


def test_a_guest_is_confined(
    podman_driver: PodmanDriver, running: tuple[str, int, BackendInstance]
) -> None:
    instance_id, _port, _ = running
    info = inspect(instance_id)
    assert sorted(info["EffectiveCaps"]) == sorted(
        f"CAP_{c}" for c in ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "KILL")
    )
    assert info["HostConfig"]["PidsLimit"] == 1024
    # root in the guest is no one on the host: a uid of the "containers" subordinate range
    uids = host_uids(instance_id)
    assert uids and all(uid >= 1_000_000 for uid in uids), uids
    status = podman_driver.exec(instance_id, ["grep", "NoNewPrivs", "/proc/self/status"])
    assert status.output.split() == ["NoNewPrivs:", "1"]


def test_two_guests_share_no_uids_processes_or_volumes(
    podman_driver: PodmanDriver,
    test_image: ImageArtifact,
    new_stateful_instance_id: NewId,
    free_port: Callable[[], int],
) -> None:
    a, b = new_stateful_instance_id(), new_stateful_instance_id()
    for instance_id in (a, b):
        volumes = (VolumeSpec("data", 1, "/data"),)
        podman_driver.create(make_spec(instance_id, test_image, free_port(), volumes=volumes))
    assert not host_uids(a) & host_uids(b)
    # b's process table holds only its own processes: a's are not even visible
    a_pid = inspect(a)["State"]["Pid"]
    assert a_pid > 0
    seen = podman_driver.exec(b, ["cat", f"/proc/{a_pid}/cmdline"])
    assert seen.exit_code != 0 and "No such file" in seen.output
    # a's volume belongs to a's uids on the host, none of b's
    mountpoint = subprocess.run(
        ["podman", "volume", "inspect", volume_name(a, "data"), "--format", "{{.Mountpoint}}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    owner = Path(mountpoint).stat().st_uid
    b_range = range(min(host_uids(b)), min(host_uids(b)) + 65536)
    assert owner >= 1_000_000 and owner not in b_range


class HostListener:
    """An HTTP server on one host address: what a guest must not reach."""

    def __init__(self, address: str) -> None:
        import http.server
        import threading

        self.server = http.server.ThreadingHTTPServer(
            (address, 0), http.server.SimpleHTTPRequestHandler
        )
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_projects_networks_keep_guests_apart_and_off_the_host(
    podman_driver: PodmanDriver,
    test_image: ImageArtifact,
    new_instance_id: NewId,
    free_port: Callable[[], int],
) -> None:
    a, b, c, control = (new_instance_id() for _ in range(4))
    group_1, group_2 = f"t{a[:12]}", f"t{c[:12]}"
    groups = {a: group_1, b: group_1, c: group_2, control: None}
    listeners: list[HostListener] = []
    try:
        for instance_id, group in groups.items():
            spec = make_spec(instance_id, test_image, free_port(), network=group)
            podman_driver.create(spec)
        nets = inspect(a)["NetworkSettings"]["Networks"]
        assert list(nets) == [network_name(group_1)]
        a_address, a_gateway = (nets[network_name(group_1)][k] for k in ("IPAddress", "Gateway"))
        assert ipaddress.ip_address(a_address) in GUEST_SUBNETS
        # The control guest is on Podman's default bridge, which nothing confines: it
        # reaches a host listener on its gateway, so the probe tells open from closed.
        control_gateway = inspect(control)["NetworkSettings"]["Gateway"]
        listeners = [HostListener(control_gateway), HostListener(a_gateway)]
        on_default, on_own_bridge = listeners
        assert fetches(podman_driver, control, control_gateway, on_default.port)
        # a project's guests reach each other (replication) ...
        assert fetches(podman_driver, b, a_address, TEST_PORT)
        # ... not another project's guest, and nothing on the host
        assert not fetches(podman_driver, c, a_address, TEST_PORT)
        assert not fetches(podman_driver, a, a_gateway, on_own_bridge.port)
        assert not fetches(podman_driver, a, control_gateway, on_default.port)
        assert not fetches(podman_driver, c, control_gateway, on_default.port)
        # published ports still serve the platform on 127.0.0.1
        wait_for_port(inspect_port(a))
    finally:
        for listener in listeners:
            listener.close()
        for instance_id in groups:
            podman_driver.delete(instance_id)
    networks = subprocess.run(
        ["podman", "network", "ls", "--format", "{{.Name}}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert network_name(group_1) not in networks and network_name(group_2) not in networks


def inspect_port(instance_id: str) -> int:
    bindings = inspect(instance_id)["HostConfig"]["PortBindings"][f"{TEST_PORT}/tcp"]
    return int(bindings[0]["HostPort"])
